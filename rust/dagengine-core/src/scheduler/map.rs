//! Dynamic fan-out: a mapped node's items, scheduled like nodes with indices after the
//! graph's, and the node's end once they have all ended (see the module docs above).

use super::{Instruction, NodeIdx, NodeState, Outcome, Scheduler, StopReason};

/// How a mapped node runs its items (see [`Scheduler::expand`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapOptions {
    /// At most this many of the node's items running at once (`None`: the run's limit).
    pub max_parallel: Option<u32>,
    /// A failed item does not fail the node (its place in the output is `null`).
    pub allow_partial: bool,
}

/// One expanded mapped node: its items are the indices `first..first + count`.
#[derive(Debug, Clone)]
pub(super) struct Map {
    pub(super) node: NodeIdx,
    pub(super) first: NodeIdx,
    pub(super) count: u32,
    pub(super) options: MapOptions,
    /// Items handed to the ready queue so far (in order).
    pub(super) released: u32,
    /// Items released and not yet ended.
    pub(super) active: u32,
    /// Items not yet ended.
    pub(super) left: u32,
    /// An item failed for good without `allow_partial`: release no more.
    pub(super) failing: bool,
}

impl Scheduler<'_> {
    /// The index in `maps` of the map item `item` belongs to.
    pub(super) fn map_of(&self, item: NodeIdx) -> usize {
        self.run.maps.partition_point(|m| m.first <= item) - 1
    }

    /// For an item of a mapped node (an index past the graph's), its node and its index
    /// among the node's items; `None` for a node of the graph.
    pub fn item(&self, idx: NodeIdx) -> Option<(NodeIdx, u32)> {
        if (idx as usize) < self.run.nodes {
            return None;
        }
        let m = self.run.maps.get(self.map_of(idx))?;
        (idx - m.first < m.count).then_some((m.node, idx - m.first))
    }

    /// The items of the mapped `node`: the index of the first and their number (`None`
    /// before it is expanded).
    pub fn items(&self, node: NodeIdx) -> Option<(NodeIdx, u32)> {
        self.run
            .maps
            .iter()
            .find(|m| m.node == node)
            .map(|m| (m.first, m.count))
    }

    /// Nodes and items so far: the graph's nodes, then every expanded node's items.
    pub fn len(&self) -> usize {
        self.run.state.len()
    }

    /// Never true: a scheduler has at least the graph's nodes (kept for `len`'s sake).
    pub fn is_empty(&self) -> bool {
        self.run.state.is_empty()
    }

    /// Expand the mapped `node`, running its attempt `attempt` (its first `Execute`), into
    /// `count` items (indices from the one returned), run under the node's policy with
    /// `options`. Items in `completed` (indices among the node's items; a resumed run)
    /// have succeeded already. With no item left to run the node ends at once
    /// ([`Instruction::MapFinished`]). `None` (and nothing changes) if that attempt is not
    /// the node's current one, or the node was expanded already.
    pub fn expand(
        &mut self,
        node: NodeIdx,
        attempt: u32,
        count: u32,
        options: MapOptions,
        completed: &[u32],
        out: &mut Vec<Instruction>,
    ) -> Option<NodeIdx> {
        if self.run.finished
            || !self.is_current(node, attempt)
            || (node as usize) >= self.run.nodes
            || self.run.maps.iter().any(|m| m.node == node)
        {
            return None;
        }
        let first = NodeIdx::try_from(self.run.state.len()).ok()?;
        let total = first.checked_add(count).filter(|&t| t < 1 << 31)?;
        let len = total as usize;
        self.run.state.resize(len, NodeState::Pending);
        self.run.waiting_on.resize(len, 0);
        self.run.attempts.resize(len, 0);
        self.run.skip_reason.resize(len, None);
        if !self.run.tally.is_empty() {
            self.run.tally.resize(len, [0; 3]);
        }
        self.run.unfinished += count as usize;
        // Its items take the slot the node held.
        self.run.running -= 1;
        self.run.expanded += 1;
        let mut left = count;
        for &i in completed {
            if i < count && self.run.state[(first + i) as usize] == NodeState::Pending {
                self.set(first + i, NodeState::Succeeded);
                left -= 1;
            }
        }
        self.run.maps.push(Map {
            node,
            first,
            count,
            options,
            released: 0,
            active: 0,
            left,
            failing: false,
        });
        let m = self.run.maps.len() - 1;
        self.release(m);
        if left == 0 {
            self.map_finished(m, out);
        }
        self.dispatch(out);
        self.maybe_finish(out);
        Some(first)
    }

    /// Hand the next items of map `m` to the ready queue, up to its `max_parallel`.
    fn release(&mut self, m: usize) {
        let map = &mut self.run.maps[m];
        if map.failing || self.run.stopped.is_some() {
            return;
        }
        let limit = map.options.max_parallel.unwrap_or(u32::MAX).max(1);
        while map.released < map.count && map.active < limit {
            let item = map.first + map.released;
            map.released += 1;
            // Completed items (a resumed run) are skipped over.
            if self.run.state[item as usize] == NodeState::Pending {
                map.active += 1;
                self.run.ready.push_back(item);
            }
        }
    }

    /// Item `item` ended with `outcome`: its map releases the next one, or ends.
    pub(super) fn item_ended(
        &mut self,
        item: NodeIdx,
        outcome: Outcome,
        out: &mut Vec<Instruction>,
    ) {
        let m = self.map_of(item);
        let map = &mut self.run.maps[m];
        map.active -= 1;
        map.left -= 1;
        if outcome == Outcome::Failure && !map.options.allow_partial && !map.failing {
            map.failing = true;
            // The node has failed already: items not started (or waiting to retry) will not
            // run, running ones are interrupted (they still report back).
            let (first, released, count) = (map.first, map.released, map.count);
            for i in first..first + count {
                match self.run.state[i as usize] {
                    NodeState::Pending | NodeState::Retrying => {
                        self.set(i, NodeState::Cancelled);
                        out.push(Instruction::Cancelled { node: i });
                        let map = &mut self.run.maps[m];
                        map.left -= 1;
                        if i < first + released {
                            map.active -= 1;
                        }
                    }
                    NodeState::Running => out.push(Instruction::Abort { node: i }),
                    _ => {}
                }
            }
        }
        self.release(m);
        if self.run.maps[m].left == 0 {
            self.map_finished(m, out);
        }
    }

    /// Every item of map `m` ended: so does its node.
    fn map_finished(&mut self, m: usize, out: &mut Vec<Instruction>) {
        let map = &self.run.maps[m];
        let (node, failed) = (map.node, map.failing);
        if self.run.state[node as usize] != NodeState::Running {
            return; // cancelled with the run
        }
        self.run.expanded -= 1;
        self.run.running += 1;
        out.push(Instruction::MapFinished { node, failed });
        if failed {
            self.set(node, NodeState::Failed);
            self.run.failed = true;
            self.ended(node, Outcome::Failure, out);
            if self.run.options.fail_fast {
                self.stop(StopReason::Cancelled, out);
            }
        } else {
            self.set(node, NodeState::Succeeded);
            self.ended(node, Outcome::Success, out);
        }
    }
}
