use dagengine_core::{Dag, GraphError};

fn dag(edges: &[(&str, &[&str])]) -> Dag {
    let mut d = Dag::new();
    for (id, deps) in edges {
        d.add_node(id, deps.iter().copied()).unwrap();
    }
    d
}

fn ids(d: &Dag, v: &[u32]) -> Vec<String> {
    v.iter().map(|&i| d.id(i).to_owned()).collect()
}

#[test]
fn topological_order_levels_roots_leaves() {
    let mut d = dag(&[
        ("load", &["t1", "t2"]),
        ("t1", &["extract"]),
        ("t2", &["extract"]),
        ("extract", &[]),
    ]);
    d.preprocess().unwrap();
    let order = ids(&d, d.topological_order());
    let pos = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(pos("extract") < pos("t1") && pos("extract") < pos("t2"));
    assert!(pos("t1") < pos("load") && pos("t2") < pos("load"));
    let levels: Vec<Vec<String>> = d.levels().iter().map(|l| ids(&d, l)).collect();
    assert_eq!(
        levels,
        vec![vec!["extract"], vec!["t1", "t2"], vec!["load"]]
    );
    assert_eq!(ids(&d, &d.roots()), vec!["extract"]);
    assert_eq!(ids(&d, &d.leaves()), vec!["load"]);
    assert_eq!(d.edge_count(), 4);
    assert_eq!(
        ids(&d, d.children(d.index_of("extract").unwrap())),
        vec!["t1", "t2"]
    );
}

#[test]
fn duplicate_id_is_refused_and_graph_unchanged() {
    let mut d = dag(&[("a", &[])]);
    let err = d.add_node("a", []).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateNode {
            node_id: "a".into()
        }
    );
    assert_eq!(err.to_string(), "duplicate node id 'a'");
    assert_eq!(d.len(), 1);
}

#[test]
fn self_dependency_is_refused() {
    let mut d = Dag::new();
    let err = d.add_node("a", ["a"]).unwrap_err();
    assert_eq!(err.to_string(), "node 'a' depends on itself");
    assert!(d.is_empty());
}

#[test]
fn unknown_dependency_names_node_and_missing_id() {
    let mut d = dag(&[("a", &[]), ("b", &["a", "ghost"])]);
    let err = d.preprocess().unwrap_err();
    assert_eq!(
        err,
        GraphError::UnknownDependency {
            node_id: "b".into(),
            dependency: "ghost".into()
        }
    );
    assert_eq!(err.to_string(), "node 'b' depends on unknown node 'ghost'");
}

#[test]
fn cycle_error_carries_the_path_in_execution_order() {
    // a -> b -> c -> a (b depends on a, c on b, a on c), plus an innocent d.
    let mut d = dag(&[("d", &[]), ("a", &["c", "d"]), ("b", &["a"]), ("c", &["b"])]);
    let GraphError::Cycle { path } = d.preprocess().unwrap_err() else {
        panic!()
    };
    assert_eq!(path.first(), path.last());
    assert_eq!(path.len(), 4);
    // Each step must be a real edge: path[k+1] depends on path[k].
    for w in path.windows(2) {
        let child = d.index_of(&w[1]).unwrap();
        let parent = d.index_of(&w[0]).unwrap();
        assert!(
            d.parents(child).contains(&parent),
            "{} -> {} is not an edge",
            w[0],
            w[1]
        );
    }
    let msg = GraphError::Cycle { path: path.clone() }.to_string();
    assert!(msg.starts_with("dependency cycle: "), "{msg}");
    assert!(msg.contains(" -> "));
}

#[test]
fn two_node_cycle() {
    let mut d = dag(&[("x", &["y"]), ("y", &["x"])]);
    let err = d.preprocess().unwrap_err();
    let GraphError::Cycle { path } = err else {
        panic!()
    };
    assert_eq!(path.len(), 3);
}

#[test]
fn repeated_dependencies_are_merged() {
    let mut d = dag(&[("a", &[]), ("b", &["a", "a"]), ("c", &["b", "a", "b"])]);
    d.preprocess().unwrap();
    assert_eq!(d.parents(1), &[0]);
    assert_eq!(d.parents(2), &[1, 0]);
    assert_eq!(d.edge_count(), 3);
    assert_eq!(d.children(0), &[1, 2]);
}

#[test]
fn csr_bulk_add_matches_named_add() {
    let mut d = Dag::new();
    d.add_node("root", []).unwrap();
    // batch: n0, n1 <- n0, n2 <- n0,n1
    d.add_nodes_csr(["n0", "n1", "n2"], &[0, 0, 1, 3], &[0, 0, 1])
        .unwrap();
    d.preprocess().unwrap();
    assert_eq!(d.len(), 4);
    assert_eq!(ids(&d, d.parents(3)), vec!["n0", "n1"]);
    assert_eq!(d.levels().len(), 3);
}

#[test]
fn csr_bulk_add_rejects_bad_shapes_and_rolls_back() {
    let mut d = Dag::new();
    d.add_node("keep", []).unwrap();
    assert!(matches!(
        d.add_nodes_csr(["a", "b"], &[0, 0], &[]),
        Err(GraphError::InvalidInput(_))
    ));
    assert!(matches!(
        d.add_nodes_csr(["a", "b"], &[0, 0, 1], &[7]),
        Err(GraphError::InvalidInput(_))
    ));
    let err = d.add_nodes_csr(["a", "keep"], &[0, 0, 0], &[]).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateNode {
            node_id: "keep".into()
        }
    );
    let err = d.add_nodes_csr(["a", "b"], &[0, 0, 1], &[1]).unwrap_err();
    assert_eq!(
        err,
        GraphError::SelfDependency {
            node_id: "b".into()
        }
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d.index_of("a"), None);
    d.add_node("a", ["keep"]).unwrap();
    d.preprocess().unwrap();
    assert_eq!(d.topological_order(), &[0, 1]);
}

#[test]
fn empty_graph() {
    let mut d = Dag::new();
    d.preprocess().unwrap();
    assert!(d.topological_order().is_empty());
    assert!(d.levels().is_empty());
}

#[test]
fn changing_the_graph_drops_the_order() {
    let mut d = dag(&[("a", &[])]);
    d.preprocess().unwrap();
    d.add_node("b", ["a"]).unwrap();
    assert!(!d.is_preprocessed());
    d.preprocess().unwrap();
    assert_eq!(d.topological_order(), &[0, 1]);
}
