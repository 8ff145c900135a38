//! The stage DAG (petgraph) over expanded instances: who consumes whom, and everything
//! downstream of a stage (to skip when it fails).

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;

use crate::spec::Instance;

pub struct StageGraph {
    graph: DiGraph<usize, ()>,
    nodes: Vec<NodeIndex>,
}

impl StageGraph {
    /// `instances` come from `spec::load`, where references were resolved and cycles refused.
    pub fn new(instances: &[Instance]) -> StageGraph {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..instances.len()).map(|i| graph.add_node(i)).collect();
        let index: HashMap<&str, usize> = instances
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        for (i, inst) in instances.iter().enumerate() {
            for (_, ups) in &inst.inputs {
                for u in ups {
                    graph.add_edge(nodes[index[u.as_str()]], nodes[i], ());
                }
            }
        }
        StageGraph { graph, nodes }
    }

    /// Indices of the stages `i` consumes directly.
    pub fn upstream(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(self.nodes[i], Direction::Incoming)
            .map(|n| self.graph[n])
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Indices of every stage that depends on `i`, directly or not (excluding `i`).
    pub fn downstream(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut dfs = Dfs::new(&self.graph, self.nodes[i]);
        while let Some(n) = dfs.next(&self.graph) {
            if n != self.nodes[i] {
                out.push(self.graph[n]);
            }
        }
        out.sort_unstable();
        out
    }
}
