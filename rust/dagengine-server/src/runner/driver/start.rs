//! Starting a node's attempt: its condition first (before the first attempt: a Lua one on
//! the loop's thread, an external one on the executor's pool), then the announcement and the
//! hand-off to where its kind runs.

use dagengine_core::{Event, Instruction, NodeIdx, NodeState, Scheduler};
use serde_json::Map;

use super::super::cache::KeyCall;
use super::super::condition::DriverExpression;
use super::super::handle::ExecOk;
use super::super::model::{contained, Condition, EventDetail, EventKind, Kind, NodeFailure};
use super::{unix_now, Driver};
use serde_json::Value;

impl Driver {
    /// Carry out `Execute`: check the node's condition before its first attempt (a Lua one
    /// here, an external one on the executor's pool), then start it. True for a Lua attempt
    /// to run on the loop's thread.
    pub(super) fn execute(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        node: NodeIdx,
        attempt: u32,
    ) -> bool {
        let now = self.ended_at.take().unwrap_or_else(unix_now);
        let condition = if attempt == 1 {
            self.plan.condition(node)
        } else {
            None
        };
        match condition {
            None => {}
            Some(Condition::Lua(script)) => match self.lua_condition(node, script) {
                Ok(true) => {}
                Ok(false) => {
                    sched.handle(Event::ConditionFalse { node, attempt }, out);
                    return false;
                }
                Err(failure) => {
                    let rec = &mut self.records[node as usize];
                    rec.attempts = attempt;
                    rec.started_at = Some(now);
                    self.finish_attempt(sched, out, node, attempt, Err(failure), Vec::new());
                    return false;
                }
            },
            Some(Condition::External) if self.external_here(node) && self.checked_here(node) => {
                // Checked in the node's own call, on the loop's thread (announced after it).
                self.queue_checked_here(node, attempt, now);
                return false;
            }
            Some(Condition::External) if self.external_here(node) => {
                let held = self.external_condition_here(sched, out, node, attempt);
                if !held {
                    return false;
                }
            }
            Some(Condition::External) => {
                // Started (and announced) once the condition held.
                self.records[node as usize].attempts = attempt;
                self.dispatch_external(node, attempt, true);
                return false;
            }
        }
        if attempt == 1 && self.looked_up(sched, out, node, attempt, now) {
            return false;
        }
        self.started(sched, out, node, attempt, now)
    }

    /// Before the first attempt of a cached node (its condition held): compute its key and
    /// look it up. True when that ended the node: a hit (it succeeds with the stored output,
    /// not executed) or a key that failed; false when it runs (a miss, or no cache).
    pub(super) fn looked_up(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        node: NodeIdx,
        attempt: u32,
        now: f64,
    ) -> bool {
        // The plan first: most nodes are not cached, and that look-up costs no atomic.
        let Some(spec) = self.plan.cache(node) else {
            return false;
        };
        let Some(cache) = self.config.cache.clone() else {
            return false;
        };
        let results = if spec.reads_results() {
            self.results_of(node)
        } else {
            Vec::new()
        };
        let call = KeyCall {
            node,
            run_id: &self.run_id,
            inputs: &self.config.inputs,
            results: &results,
        };
        let key = match call.key(&self.plan, spec, &self.shared.cancel) {
            Ok(key) => key,
            Err(failure) => {
                let rec = &mut self.records[node as usize];
                rec.attempts = attempt;
                rec.started_at = Some(now);
                self.finish_attempt(sched, out, node, attempt, Err(failure), Vec::new());
                return true;
            }
        };
        let hit = cache.get(self.plan.dag.id(node), &key);
        let rec = &mut self.records[node as usize];
        rec.cache_note().cache_key = Some(key.clone());
        // Only an object is a node's output: anything else stored there is a miss.
        let Some(hit) = hit.filter(|h| h.output.is_object()) else {
            return false;
        };
        rec.cache_note().cached_from = Some(hit.run_id.clone());
        rec.started_at = Some(now);
        let detail = EventDetail::Cached {
            run_id: hit.run_id,
            key,
        };
        self.emit_at(now, EventKind::NodeCached, Some(node), 0, detail);
        let Value::Object(output) = hit.output else {
            unreachable!("filtered above")
        };
        let ok = ExecOk {
            output,
            logs: Vec::new(),
        };
        self.finish_attempt(sched, out, node, attempt, Ok(ok), Vec::new());
        true
    }

    /// Start attempt `attempt` of `node` at `now`: record and announce it, then run it (a
    /// no-op here, external on its pool). True for a Lua attempt, which the caller runs.
    pub(super) fn started(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        node: NodeIdx,
        attempt: u32,
        now: f64,
    ) -> bool {
        if self.plan.map(node).is_some() {
            self.expand(sched, out, node, attempt, now);
            return false;
        }
        self.announce(node, attempt, now);
        match self.plan.kind(self.owner(node)) {
            Kind::Noop => {
                let ok = ExecOk {
                    output: Map::new(),
                    logs: Vec::new(),
                };
                self.finish_attempt(sched, out, node, attempt, Ok(ok), Vec::new());
                false
            }
            Kind::Lua => true,
            Kind::External if self.external_here(node) => {
                self.queue_here(node, attempt);
                false
            }
            Kind::External => {
                self.dispatch_external(node, attempt, false);
                false
            }
        }
    }

    /// Whether the external condition of `node` (to run here) is checked in the same call as
    /// the node: an external node that is neither mapped nor cached (those have steps of
    /// their own between the condition and the call).
    fn checked_here(&self, node: NodeIdx) -> bool {
        self.plan.kind(node) == Kind::External
            && self.plan.map(node).is_none()
            && !(self.config.cache.is_some() && self.plan.cache(node).is_some())
    }

    /// Check the external condition of `node` here (driven by `run_inline`), as the pool
    /// job would: true if it held and the node goes on to start; else it was skipped or
    /// failed.
    fn external_condition_here(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        node: NodeIdx,
        attempt: u32,
    ) -> bool {
        self.records[node as usize].attempts = attempt;
        let call = self.external_call(node, attempt);
        let external = self
            .external
            .clone()
            .expect("external nodes have an executor");
        let held = contained(
            || self.plan.dag.id(node),
            || external.condition(&self.plan, &call),
        );
        // A condition's lines are dropped (as a Lua condition's), unless it failed.
        let logs = external.take_logs(&self.plan, node, None, attempt);
        match held {
            Ok(true) => true,
            Ok(false) => {
                self.tokens[node as usize] = None;
                sched.handle(Event::ConditionFalse { node, attempt }, out);
                false
            }
            Err(mut failure) => {
                // A retry would not check the condition again.
                failure.retryable = false;
                self.finish_attempt(sched, out, node, attempt, Err(failure), logs);
                false
            }
        }
    }

    /// Record and announce the start of an attempt.
    pub(super) fn announce(&mut self, node: NodeIdx, attempt: u32, now: f64) {
        let rec = &mut self.records[node as usize];
        rec.attempts = attempt;
        rec.started_at.get_or_insert(now);
        self.emit_at(
            now,
            EventKind::NodeStarted,
            Some(node),
            attempt,
            EventDetail::None,
        );
    }

    /// Evaluate the Lua condition of `node` here, on the driver: it is an expression, far
    /// shorter than a thread hand-off.
    fn lua_condition(
        &self,
        node: NodeIdx,
        script: &dagengine_lua::LuaScript,
    ) -> Result<bool, NodeFailure> {
        let results = if script.reads_results() {
            self.results_of(node)
        } else {
            Vec::new()
        };
        let call = DriverExpression {
            node,
            run_id: &self.run_id,
            inputs: &self.config.inputs,
            results: &results,
            node_timeout: self.plan.policies[self.policy_index(node)].timeout,
        };
        call.condition(&self.plan, script, &self.shared.cancel)
    }

    /// An external condition held: announce the attempt and run the node (an external one
    /// is already running, its call follows the condition on the same pool job).
    pub(super) fn condition_passed(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        node: NodeIdx,
        attempt: u32,
    ) {
        if sched.state(node) != NodeState::Running || sched.attempts(node) != attempt {
            return;
        }
        if self.plan.map(node).is_some() {
            self.expand(sched, out, node, attempt, unix_now());
            return;
        }
        let now = unix_now();
        // A cached node's pool job stopped after its condition: it runs on a miss.
        let cached = self.config.cache.is_some() && self.plan.cache(node).is_some();
        if cached && self.looked_up(sched, out, node, attempt, now) {
            return;
        }
        self.announce(node, attempt, now);
        match self.plan.kind(node) {
            Kind::Noop => {
                let ok = ExecOk {
                    output: Map::new(),
                    logs: Vec::new(),
                };
                self.finish_attempt(sched, out, node, attempt, Ok(ok), Vec::new());
            }
            Kind::Lua => self.dispatch_lua(node, attempt),
            Kind::External if cached => self.dispatch_external(node, attempt, false),
            Kind::External => {}
        }
    }
    /// Whether attempt `attempt` of `node` is still waiting for its external condition (its
    /// pool job has not answered; the node is not announced yet): the run need not wait for
    /// it on a stop, and a timeout then is the condition's.
    pub(super) fn condition_pending(&self, node: NodeIdx, attempt: u32) -> bool {
        attempt == 1
            && matches!(self.plan.condition(node), Some(Condition::External))
            && self.records[node as usize].started_at.is_none()
    }
}
