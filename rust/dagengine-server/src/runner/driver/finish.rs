//! Ending a node's attempt: its log lines first, then its record and the scheduler's news.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dagengine_core::{Event, Instruction, NodeIdx, NodeState, Scheduler, StopReason};
use serde_json::Value;

use super::super::handle::ExecOk;
use super::super::model::empty_output;
use super::super::model::{EventDetail, EventKind, LogLine, NodeFailure};
use super::{unix_now, Driver};

impl Driver {
    /// Record the end of an attempt (if it is still the current one) and tell the scheduler.
    /// The attempt's `logs` come first, whatever its result (after its end only when it
    /// already ended: it outlived its timeout).
    pub(super) fn finish_attempt(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        node: NodeIdx,
        attempt: u32,
        result: Result<ExecOk, NodeFailure>,
        logs: Vec<LogLine>,
    ) {
        if !logs.is_empty() {
            let now = unix_now();
            for line in logs {
                self.emit_at(
                    now,
                    EventKind::NodeLog,
                    Some(node),
                    attempt,
                    EventDetail::Log(line),
                );
            }
        }
        if sched.state(node) != NodeState::Running || sched.attempts(node) != attempt {
            return;
        }
        // A cancel request may overtake its own message (the flag is set first): honour it
        // before this result, so an attempt it interrupted counts as cancelled, not failed.
        if self.shared.cancel.load(Ordering::SeqCst) && sched.stop_reason().is_none() {
            sched.handle(Event::Stop(StopReason::Cancelled), out);
            if sched.state(node) != NodeState::Running {
                return;
            }
        }
        if let Some(t) = self.tokens[node as usize].take() {
            t.store(true, Ordering::Relaxed);
        }
        let now = unix_now();
        self.ended_at = Some(now);
        let rec = &mut self.records[node as usize];
        rec.finished_at = Some(now);
        match result {
            Ok(ok) => {
                let rec = &mut self.records[node as usize];
                rec.output = Some(if ok.output.is_empty() {
                    empty_output()
                } else {
                    Arc::new(Value::Object(ok.output))
                });
                rec.error = None;
                self.output_set(node);
                sched.handle(Event::NodeSucceeded { node, attempt }, out);
                if sched.state(node) == NodeState::Succeeded {
                    self.store_cached(node);
                    let detail = match &self.records[node as usize].output {
                        Some(out) if self.config.event_outputs => EventDetail::Output(out.clone()),
                        _ => EventDetail::None,
                    };
                    self.emit_at(now, EventKind::NodeSucceeded, Some(node), attempt, detail);
                }
            }
            Err(failure) => {
                let retryable = failure.retryable;
                rec.error = Some(Box::new(failure));
                sched.handle(
                    Event::NodeFailed {
                        node,
                        attempt,
                        retryable,
                    },
                    out,
                );
                if sched.state(node) == NodeState::Failed {
                    if (node as usize) < self.plan.dag.len() {
                        // An item's failure is its mapped node's to report.
                        self.first_failure.get_or_insert(node);
                    }
                    let detail = EventDetail::Error(
                        self.records[node as usize]
                            .error
                            .as_deref()
                            .cloned()
                            .expect("just set"),
                    );
                    self.emit_at(now, EventKind::NodeFailed, Some(node), attempt, detail);
                }
            }
        }
    }
}

impl Driver {
    /// A cached node that ran and succeeded: store its output under its key.
    fn store_cached(&self, node: NodeIdx) {
        let rec = &self.records[node as usize];
        let (Some(cache), Some(key), None, Some(output)) = (
            &self.config.cache,
            rec.cache_key(),
            rec.cached_from(),
            &rec.output,
        ) else {
            return;
        };
        let ttl = self.plan.cache(node).and_then(|spec| spec.ttl);
        cache.put(self.plan.dag.id(node), key, output, &self.run_id, ttl);
    }
}
