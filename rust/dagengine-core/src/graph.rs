//! The graph model: nodes with dense `u32` indices and compact (CSR) adjacency.
//!
//! Node ids live in one string arena and are found again through a `HashTable` of indices,
//! so a node costs a few dozen bytes however long the graph gets (1M nodes with 3M edges
//! fit in well under 150 bytes per node). Dependencies may name nodes added later; they are
//! resolved by [`Dag::preprocess`], which also validates the graph and computes the
//! topological order, the children lists and the level of every node.
//!
//! Ids are hashed with `foldhash`, seeded per graph: several times faster than `SipHash` on
//! short ids, and the random seed keeps crafted ids from forcing collisions.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

use hashbrown::HashTable;

use crate::error::GraphError;

/// Dense index of a node: its position in insertion order.
pub type NodeIdx = u32;

/// Marks an entry of `parent_refs` that still holds an unresolved dependency name.
const PENDING: u32 = 1 << 31;

/// A directed acyclic graph of nodes identified by string ids.
#[derive(Debug, Clone)]
pub struct Dag {
    names: String,
    name_ends: Vec<u32>,
    index: HashTable<NodeIdx>,
    hasher: RandomState,
    /// CSR of dependencies: node `i`'s parents are `parent_refs[parent_ends[i-1]..parent_ends[i]]`.
    parent_ends: Vec<u32>,
    parent_refs: Vec<u32>,
    /// Names of dependencies not known when their node was added (`PENDING | k` points here).
    pending: Vec<Box<str>>,
    order: Option<Order>,
}

/// What [`Dag::preprocess`] computes; dropped whenever the graph changes.
#[derive(Debug, Clone)]
struct Order {
    topo: Vec<NodeIdx>,
    child_ends: Vec<u32>,
    children: Vec<NodeIdx>,
    level: Vec<u32>,
    depth: u32,
}

impl Default for Dag {
    fn default() -> Self {
        Self::new()
    }
}

fn range(ends: &[u32], i: usize) -> std::ops::Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    start..ends[i] as usize
}

impl Dag {
    /// An empty graph.
    pub fn new() -> Self {
        Self::with_capacity(0, 0)
    }

    /// An empty graph with room for `nodes` nodes and `edges` dependencies.
    pub fn with_capacity(nodes: usize, edges: usize) -> Self {
        Self {
            names: String::with_capacity(nodes * 8),
            name_ends: Vec::with_capacity(nodes),
            index: HashTable::with_capacity(nodes),
            hasher: RandomState::default(),
            parent_ends: Vec::with_capacity(nodes),
            parent_refs: Vec::with_capacity(edges),
            pending: Vec::new(),
            order: None,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.name_ends.len()
    }

    /// True when the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.name_ends.is_empty()
    }

    /// Number of dependency edges (after [`Dag::preprocess`], duplicates removed).
    pub fn edge_count(&self) -> usize {
        self.parent_refs.len()
    }

    /// The id of node `idx`.
    pub fn id(&self, idx: NodeIdx) -> &str {
        &self.names[range(&self.name_ends, idx as usize)]
    }

    /// Iterates over all ids in index order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len() as u32).map(|i| self.id(i))
    }

    /// The index of the node with this id.
    pub fn index_of(&self, id: &str) -> Option<NodeIdx> {
        let hash = self.hasher.hash_one(id);
        self.index.find(hash, |&i| self.id(i) == id).copied()
    }

    /// Reserve room for `nodes` more nodes and `edges` more dependencies.
    pub fn reserve(&mut self, nodes: usize, edges: usize) {
        self.names.reserve(nodes * 8);
        self.name_ends.reserve(nodes);
        self.parent_ends.reserve(nodes);
        self.parent_refs.reserve(edges);
        let hasher = &self.hasher;
        let (names, ends) = (&self.names, &self.name_ends);
        self.index
            .reserve(nodes, |&i| hasher.hash_one(&names[range(ends, i as usize)]));
    }

    fn push_name(&mut self, id: &str) -> Result<NodeIdx, GraphError> {
        let idx = self.len();
        if idx >= PENDING as usize {
            return Err(GraphError::InvalidInput(format!(
                "a graph holds at most {PENDING} nodes"
            )));
        }
        let idx = idx as NodeIdx;
        let hash = self.hasher.hash_one(id);
        let (names, ends) = (&self.names, &self.name_ends);
        if self
            .index
            .find(hash, |&i| &names[range(ends, i as usize)] == id)
            .is_some()
        {
            return Err(GraphError::DuplicateNode {
                node_id: id.to_owned(),
            });
        }
        let end = u32::try_from(self.names.len() + id.len())
            .map_err(|_| GraphError::InvalidInput("node ids exceed 4 GiB in total".to_owned()))?;
        self.names.push_str(id);
        self.name_ends.push(end);
        let hasher = &self.hasher;
        let (names, ends) = (&self.names, &self.name_ends);
        self.index.insert_unique(hash, idx, |&i| {
            hasher.hash_one(&names[range(ends, i as usize)])
        });
        Ok(idx)
    }

    fn end_parents(&mut self) -> Result<(), GraphError> {
        let end = u32::try_from(self.parent_refs.len())
            .map_err(|_| GraphError::InvalidInput("more than 4G dependencies".to_owned()))?;
        self.parent_ends.push(end);
        Ok(())
    }

    /// Add a node with its dependencies (ids, possibly of nodes added later).
    ///
    /// Duplicate ids and self-dependencies are refused at once; unknown dependencies and
    /// cycles are found by [`Dag::preprocess`]. On error the graph is unchanged.
    pub fn add_node<'a, I>(&mut self, id: &str, deps: I) -> Result<NodeIdx, GraphError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let deps: Vec<&str> = deps.into_iter().collect();
        if deps.contains(&id) {
            return Err(GraphError::SelfDependency {
                node_id: id.to_owned(),
            });
        }
        let idx = self.push_name(id)?;
        self.order = None;
        for dep in deps {
            let r = if let Some(p) = self.index_of(dep) {
                p
            } else {
                let k = self.pending.len() as u32;
                self.pending.push(dep.into());
                PENDING | k
            };
            self.parent_refs.push(r);
        }
        self.end_parents()?;
        Ok(idx)
    }

    /// Add many nodes at once: node `k` of this batch has the parents
    /// `parents[offsets[k]..offsets[k + 1]]`, given as indices into this batch.
    ///
    /// This is the bulk path for very large graphs: no per-dependency hashing.
    pub fn add_nodes_csr<'a, I>(
        &mut self,
        ids: I,
        offsets: &[u32],
        parents: &[u32],
    ) -> Result<(), GraphError>
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: ExactSizeIterator,
    {
        let ids = ids.into_iter();
        let count = ids.len();
        if offsets.len() != count + 1 {
            return Err(GraphError::InvalidInput(format!(
                "offsets has {} entries; expected one more than the {count} ids",
                offsets.len()
            )));
        }
        if offsets[0] != 0
            || offsets.windows(2).any(|w| w[0] > w[1])
            || offsets[count] as usize != parents.len()
        {
            return Err(GraphError::InvalidInput(
                "offsets must start at 0, never decrease and end at len(parents)".to_owned(),
            ));
        }
        if let Some(&bad) = parents.iter().find(|&&p| p as usize >= count) {
            return Err(GraphError::InvalidInput(format!(
                "parent index {bad} is out of range for a batch of {count} nodes"
            )));
        }
        let base = self.len();
        self.reserve(count, parents.len());
        let rollback = |dag: &mut Self, added: usize| dag.truncate(base, added);
        for (k, id) in ids.enumerate() {
            if let Err(e) = self.push_name(id) {
                rollback(self, k);
                return Err(e);
            }
            let slice = &parents[offsets[k] as usize..offsets[k + 1] as usize];
            if slice.contains(&(k as u32)) {
                rollback(self, k + 1);
                return Err(GraphError::SelfDependency {
                    node_id: id.to_owned(),
                });
            }
            self.parent_refs
                .extend(slice.iter().map(|&p| base as u32 + p));
            if let Err(e) = self.end_parents() {
                rollback(self, k + 1);
                return Err(e);
            }
        }
        self.order = None;
        Ok(())
    }

    /// Remove the last `added` nodes of a failed batch that started at `base`.
    fn truncate(&mut self, base: usize, added: usize) {
        for i in (base..base + added).rev() {
            let hash = self.hasher.hash_one(self.id(i as u32));
            if let Ok(entry) = self.index.find_entry(hash, |&j| j as usize == i) {
                entry.remove();
            }
        }
        let names_end = if base == 0 {
            0
        } else {
            self.name_ends[base - 1]
        };
        self.names.truncate(names_end as usize);
        self.name_ends.truncate(base);
        let refs_end = if base == 0 {
            0
        } else {
            self.parent_ends[base - 1]
        };
        self.parent_refs.truncate(refs_end as usize);
        self.parent_ends.truncate(base);
    }

    /// The parents (dependencies) of node `idx`.
    ///
    /// Before [`Dag::preprocess`] an entry may still be unresolved; use it after.
    pub fn parents(&self, idx: NodeIdx) -> &[NodeIdx] {
        &self.parent_refs[range(&self.parent_ends, idx as usize)]
    }

    /// Whether [`Dag::preprocess`] has run since the last change.
    pub fn is_preprocessed(&self) -> bool {
        self.order.is_some()
    }

    fn order(&self) -> &Order {
        self.order
            .as_ref()
            .expect("Dag::preprocess must succeed before the order is read")
    }

    /// The children (dependents) of node `idx`. Needs [`Dag::preprocess`].
    pub fn children(&self, idx: NodeIdx) -> &[NodeIdx] {
        let o = self.order();
        &o.children[range(&o.child_ends, idx as usize)]
    }

    /// Nodes in an order where every node comes after all of its parents.
    pub fn topological_order(&self) -> &[NodeIdx] {
        &self.order().topo
    }

    /// The level of a node: 0 for roots, else one more than its deepest parent.
    pub fn level(&self, idx: NodeIdx) -> u32 {
        self.order().level[idx as usize]
    }

    /// Nodes grouped by level; each level's nodes can run in parallel.
    pub fn levels(&self) -> Vec<Vec<NodeIdx>> {
        let o = self.order();
        let mut levels = vec![
            Vec::new();
            if self.is_empty() {
                0
            } else {
                o.depth as usize + 1
            }
        ];
        for &n in &o.topo {
            levels[o.level[n as usize] as usize].push(n);
        }
        levels
    }

    /// Nodes without dependencies.
    pub fn roots(&self) -> Vec<NodeIdx> {
        (0..self.len() as u32)
            .filter(|&i| self.parents(i).is_empty())
            .collect()
    }

    /// Nodes nothing depends on. Needs [`Dag::preprocess`].
    pub fn leaves(&self) -> Vec<NodeIdx> {
        (0..self.len() as u32)
            .filter(|&i| self.children(i).is_empty())
            .collect()
    }

    /// Validate the graph and compute its order.
    ///
    /// Resolves dependencies named before their node existed (error: the first node, in
    /// insertion order, with an unknown dependency), drops repeated dependencies, and runs
    /// Kahn's algorithm; nodes left over lie on or behind a cycle, and the error carries
    /// one such cycle as a path.
    pub fn preprocess(&mut self) -> Result<(), GraphError> {
        if self.order.is_some() {
            return Ok(());
        }
        self.resolve_pending()?;
        self.dedup_parents();
        let n = self.len();
        let mut indegree: Vec<u32> = vec![0; n];
        let mut child_ends: Vec<u32> = vec![0; n];
        for (i, deg) in indegree.iter_mut().enumerate() {
            let parents = self.parents(i as u32);
            *deg = parents.len() as u32;
            for &p in parents {
                child_ends[p as usize] += 1;
            }
        }
        let mut acc = 0u32;
        for e in &mut child_ends {
            acc += *e;
            *e = acc;
        }
        // Fill children back to front so each list ends up in insertion order.
        let mut children = vec![0u32; self.parent_refs.len()];
        let mut cursor = child_ends.clone();
        for i in (0..n).rev() {
            for &p in self.parents(i as u32).iter().rev() {
                cursor[p as usize] -= 1;
                children[cursor[p as usize] as usize] = i as u32;
            }
        }
        let mut topo: Vec<u32> = Vec::with_capacity(n);
        topo.extend((0..n as u32).filter(|&i| indegree[i as usize] == 0));
        let mut level = vec![0u32; n];
        let mut depth = 0;
        let mut head = 0;
        while head < topo.len() {
            let v = topo[head] as usize;
            head += 1;
            let next = level[v] + 1;
            for &c in &children[range(&child_ends, v)] {
                let c = c as usize;
                if level[c] < next {
                    level[c] = next;
                    depth = depth.max(next);
                }
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    topo.push(c as u32);
                }
            }
        }
        if topo.len() < n {
            return Err(GraphError::Cycle {
                path: self.find_cycle(&indegree),
            });
        }
        self.order = Some(Order {
            topo,
            child_ends,
            children,
            level,
            depth,
        });
        Ok(())
    }

    fn resolve_pending(&mut self) -> Result<(), GraphError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for i in 0..self.len() {
            for k in range(&self.parent_ends, i) {
                let r = self.parent_refs[k];
                if r & PENDING == 0 {
                    continue;
                }
                let name = &self.pending[(r & !PENDING) as usize];
                match self.index_of(name) {
                    Some(p) if p as usize == i => {
                        return Err(GraphError::SelfDependency {
                            node_id: name.to_string(),
                        })
                    }
                    Some(p) => self.parent_refs[k] = p,
                    None => {
                        return Err(GraphError::UnknownDependency {
                            node_id: self.id(i as u32).to_owned(),
                            dependency: name.to_string(),
                        })
                    }
                }
            }
        }
        self.pending = Vec::new();
        Ok(())
    }

    /// Remove repeated dependencies of a node (`deps: [a, a]`), compacting the CSR arrays
    /// only when there is something to remove.
    fn dedup_parents(&mut self) {
        let has_dup = (0..self.len()).any(|i| {
            let s = self.parents(i as u32);
            s.len() > 1 && (1..s.len()).any(|k| s[..k].contains(&s[k]))
        });
        if !has_dup {
            return;
        }
        let mut write = 0usize;
        let mut start = 0usize;
        for i in 0..self.len() {
            let end = self.parent_ends[i] as usize;
            let seg_start = write;
            for k in start..end {
                let p = self.parent_refs[k];
                if !self.parent_refs[seg_start..write].contains(&p) {
                    self.parent_refs[write] = p;
                    write += 1;
                }
            }
            start = end;
            self.parent_ends[i] = write as u32;
        }
        self.parent_refs.truncate(write);
    }

    /// Walk parents among the nodes Kahn's algorithm could not order until a node repeats.
    /// Every such node has at least one such parent, so the walk always closes a cycle.
    fn find_cycle(&self, indegree: &[u32]) -> Vec<String> {
        let start = indegree
            .iter()
            .position(|&d| d > 0)
            .expect("a cycle leaves a node unordered") as u32;
        let mut seen_at = vec![u32::MAX; self.len()];
        let mut walk = Vec::new();
        let mut v = start;
        while seen_at[v as usize] == u32::MAX {
            seen_at[v as usize] = walk.len() as u32;
            walk.push(v);
            v = *self
                .parents(v)
                .iter()
                .find(|&&p| indegree[p as usize] > 0)
                .expect("an unordered node has an unordered parent");
        }
        let first = seen_at[v as usize] as usize;
        let mut path: Vec<String> = walk[first..]
            .iter()
            .rev()
            .map(|&i| self.id(i).to_owned())
            .collect();
        path.push(path[0].clone());
        path
    }
}
