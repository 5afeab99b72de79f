//! Sandboxed Lua 5.4 executor for dagengine workflow nodes.
//!
//! A node's script runs with [`execute`] on a Lua state pooled per OS thread.
//! Compiled chunks are cached per state (keyed by content hash, with the
//! source compared on lookup), so running the same script again only pays
//! for converting its inputs and outputs.
//!
//! # What a script sees
//!
//! * `inputs` — the run inputs (converted from JSON, see below), read-only: assigning to
//!   it or to any table in it (`inputs.x = 1`, `table.insert(inputs.list, 2)`,
//!   `rawset(inputs, "x", 1)`) raises `inputs is read-only (cannot set 'x')`. Its tables
//!   are views (`view`) over tables shared by the run's executions on the thread's state
//!   ([`Inputs::Shared`]): indexing, `#`, `ipairs`, `pairs`, `next`, `rawget`, `rawlen`,
//!   the table library's reading functions and `json.encode` see their values;
//!   `getmetatable` gives `"json.array"` for an array, `false` for an object; returned
//!   (whole or in part) they convert to the values they show;
//! * `results` — a table mapping each parent node id to that parent's output;
//! * `ctx` — `{ node_id = ..., run_id = ..., attempt = ... }`;
//!
//!   (each of these three is converted and set only if the script can read it:
//!   if its source names it, or reaches its environment through `_ENV`, `...`
//!   or `load`; see `Names`)
//! * the `string`, `table`, `math`, `utf8` and `coroutine` libraries
//!   (read-only: `string.upper = nil` raises an error, so no run can tamper
//!   with what the next run sees; `string.dump` does not exist);
//! * base functions `assert`, `error`, `ipairs`, `next`, `pairs`, `pcall`,
//!   `xpcall`, `select`, `tonumber`, `tostring`, `type`, `rawequal`, `rawget`,
//!   `rawset`, `rawlen`, `setmetatable`, `getmetatable`, `unpack`
//!   (= `table.unpack`) and `_VERSION`;
//! * `json.encode(v)`, `json.decode(s)`, `json.null`, `json.array([t])`;
//! * `log(...)`: arguments are `tostring`ed, joined with tabs and appended to
//!   [`LuaOutput::logs`]; `print` is an alias;
//! * `load(chunk [, name [, mode [, env]]])`: text chunks only (`mode` is
//!   ignored and binary chunks are refused); `env` defaults to the running
//!   script's own environment.
//!
//! Absent: `os`, `io`, `require`, `package`, `debug`, `dofile`, `loadfile`,
//! `collectgarbage`, `_G`. `setmetatable` refuses metatables with `__gc` (a
//! finalizer would run at an arbitrary later time, outside this run's limits).
//!
//! Each execution starts with an `_ENV` table holding only `inputs`,
//! `results` and `ctx` (those of them the script can read), whose `__index`
//! is the shared read-only table of the above, so global assignments never
//! leak into later runs. The state reuses one environment and one `ctx`
//! table: both are emptied (and `ctx`'s metatable removed) after every run,
//! and again before the next run sets them. The environment is installed by
//! compiling every script behind a `local _ENV = ...;` prefix on its first
//! line (line numbers are unchanged); as a consequence the chunk's top-level
//! `...` is that environment.
//!
//! The script's return value becomes the node output: a table converts to the
//! output object, `nil` (or no value) is an empty output, anything else is
//! [`LuaError::BadReturn`].
//!
//! # JSON mapping
//!
//! JSON to Lua:
//!
//! | JSON | Lua |
//! |------|-----|
//! | object | table with string keys |
//! | array | table `1..n` carrying the shared array marker metatable (so `[]` round-trips) |
//! | `null` | `json.null` (a light userdata; note that it is truthy) |
//! | integer (fits `i64`) | integer |
//! | other number | float |
//! | string / bool | string / boolean |
//!
//! Lua to JSON:
//!
//! * a table with the array marker (from inputs or `json.array`) is an
//!   array; holes become `null`;
//! * a table whose keys are exactly `1..n` (n >= 1) is an array;
//! * an empty table without the marker is the object `{}`;
//! * any other table is an object: string keys as-is, integer keys as their
//!   decimal string; keys are sorted (Lua's iteration order is not stable
//!   across states); float, boolean and other keys are a conversion error;
//! * integer -> integer, float -> float (NaN and infinities are an error),
//!   `nil`/`json.null` -> `null`;
//! * strings must be valid UTF-8;
//! * functions, userdata and threads are an error;
//! * nesting deeper than 128 levels, or a cycle, is an error.
//!
//! Conversion errors name the path of the offending value, e.g.
//! `result.items[2].callback` (Lua indexes, so arrays start at `[1]`).
//!
//! # Limits
//!
//! A count hook fires every 1000 VM instructions; it charges the instruction
//! budget and checks the deadline and the cancel flag, so all three are
//! enforced at that granularity. Once a count hook is set, Lua 5.4 stops the VM
//! at every instruction to count, which costs a short script about a tenth of
//! its time, so the hook is set only where needed:
//!
//! * a run with an instruction limit (or a deadline under 20 ms away) has it
//!   from its first instruction: the count is exact;
//! * any other run starts without it. A watchdog thread looks at the running
//!   scripts every millisecond and has the hook set (by a signal handled on the
//!   script's own thread) on a script it finds running twice in a row, so the
//!   deadline and the cancel flag take effect about 2 ms late (when the
//!   watchdog thread gets a core in time). Scripts that use coroutines get the
//!   hook when they create one (a coroutine copies its creator's hook then,
//!   never later);
//! * a run with no deadline, no cancel flag and no instruction limit has no
//!   hook at all;
//! * nor has a *bounded* chunk (a main function of at most 100 instructions
//!   with no call, loop, backward jump, closure or to-be-closed variable, read
//!   from its bytecode when it is compiled: a condition like `inputs.n > 0`)
//!   without a deadline: it runs fewer instructions than the hook's interval,
//!   so the hook would never fire.
//!
//! A chunk that sets no global and creates no closure (also read from its
//! bytecode), and reads no global the host sets but the run's shared inputs,
//! cannot change its environment: it runs in an environment kept for the run
//! (holding only `inputs`), not set up and emptied per call.
//!
//! The hook runs every 1,000 instructions, and one instruction can be a long C
//! call (`s:upper()` on 10 MB). So the watchdog also watches each run's
//! deadline and cancel flag (with the hook set early or late): once either is
//! due it signals the script's thread, whose handler sets the hook to run at
//! the next instruction, on the coroutine running then if any (the sandbox's
//! `coroutine.resume` tells it which). Without the watchdog, the hook itself
//! runs at every instruction once the deadline is nearer than its last
//! interval took.
//!
//! The default limits ([`LuaLimits::default`]) are 64 MiB of memory and
//! [`DEFAULT_TIMEOUT`] of wall time, with no instruction limit. Memory is
//! limited through Lua's allocator: the script may allocate
//! [`LuaLimits::max_memory`] bytes beyond the state's
//! footprint at the start of the run (log lines count against the same
//! budget). Limit errors cannot be caught by the script: `pcall`, `xpcall` and
//! `coroutine.resume` re-raise them. The hook is also active in coroutines.
//!
//! Limits reach everything a script runs: `xpcall` message handlers (the
//! sandbox's `xpcall` calls the handler once the failed call has unwound, as
//! an ordinary call; results as Lua's), `__close` handlers, coroutines inside
//! those (a coroutine that a limit error ended is never closed afterwards: Lua
//! leaves it with hooks off), and pattern matching: `string.find`, `match`,
//! `gmatch` and `gsub` match in Rust with Lua's algorithm, a step budget per
//! search (1,000,000 steps plus 100 per byte of the subject; past it, the Lua
//! error `pattern too complex (more than N steps)`) and the limit checks
//! every 1,000 steps (each step counts as an instruction).
//! `load` feeds a long string chunk to the parser in 4 KiB pieces, so that
//! the limits are checked while it parses. Other C library calls (a
//! `table.sort` of a large table, say) still run to their end, bounded by the
//! memory limit, before the limits are checked.
//!
//! After any error, including limit errors, the thread's state stays usable;
//! after a memory limit error a full garbage collection runs before the
//! next execution. States are rebuilt after unexpected internal errors.

mod bounded;
mod convert;
mod engine;
mod hook;
mod host;
mod pattern;
mod run_state;
mod simple;
mod view;
mod watchdog;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagengine_core::ErrorKind;
use serde_json::{Map, Value};

/// Resource limits for one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuaLimits {
    /// Maximum VM instructions (enforced in steps of 1000); `None` = unlimited.
    /// Setting one has the limit hook run from the first instruction (see the crate docs).
    pub max_instructions: Option<u64>,
    /// Maximum bytes allocated by the script (see the crate docs).
    pub max_memory: Option<usize>,
    /// Wall-clock limit for the script's execution.
    pub timeout: Option<Duration>,
}

/// The wall-time limit of a script that sets none ([`LuaLimits::default`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for LuaLimits {
    /// 64 MiB of memory and [`DEFAULT_TIMEOUT`] of wall time; no instruction limit (an
    /// exact count has a price, see the crate docs).
    fn default() -> Self {
        LuaLimits {
            max_instructions: None,
            max_memory: Some(64 * 1024 * 1024),
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }
}

impl LuaLimits {
    /// No limits at all; for trusted scripts and tests.
    pub const UNLIMITED: LuaLimits = LuaLimits {
        max_instructions: None,
        max_memory: None,
        timeout: None,
    };
}

/// A Lua script's source, shared cheaply and hashed once for the compile cache.
#[derive(Clone)]
pub struct LuaScript {
    source: Arc<str>,
    hash: u64,
    names: Names,
    /// Set when the script is a condition [`evaluate_bool`] may answer without Lua.
    simple: Option<simple::Simple>,
}

/// Which of the globals the host sets (`inputs`, `results`, `ctx`) a script can read.
///
/// A script reads a global through a name written in its source, unless it can reach its
/// environment table itself: through `_ENV`, through the chunk's `...` (which is the
/// environment) or through `load` (whose chunks run in that environment and whose source can
/// be built at run time). A script that has none of those, and whose source does not
/// contain a global's name anywhere (not even in a comment or a string), cannot read that
/// global, so the host does not convert and set it: a script that only sums its inputs
/// does not pay for its parents' results.
// One flag per global, read where each is set: a bit set would say the same less plainly.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) inputs: bool,
    pub(crate) results: bool,
    pub(crate) ctx: bool,
    /// `item` and `index` (a mapped node's item; also `ctx.item`, `ctx.index`).
    pub(crate) item: bool,
}

impl Names {
    fn of(source: &str) -> Names {
        let reaches_env = ["_ENV", "...", "load"].iter().any(|t| source.contains(t));
        let named = |name: &str| reaches_env || source.contains(name);
        Names {
            inputs: named("inputs"),
            results: named("results"),
            ctx: named("ctx"),
            item: named("item") || named("index"),
        }
    }
}

impl LuaScript {
    /// Wraps `source`; nothing is compiled until [`LuaScript::check`] or [`execute`].
    pub fn new(source: impl Into<Arc<str>>) -> Self {
        let source = source.into();
        let mut h = DefaultHasher::new();
        source.hash(&mut h);
        LuaScript {
            hash: h.finish(),
            names: Names::of(&source),
            simple: simple::Simple::of(&source),
            source,
        }
    }

    /// The script's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the script can read `results` (see the crate docs): when it cannot, the
    /// caller need not gather the parents' outputs.
    pub fn reads_results(&self) -> bool {
        self.names.results
    }

    /// The content hash used as compile-cache key.
    pub fn content_hash(&self) -> u64 {
        self.hash
    }

    /// Compiles the script as a text chunk on this thread's pooled state (the result is
    /// cached, so a later [`execute`] of the same source does not compile again).
    ///
    /// Returns [`LuaError::Syntax`] (with the line) for syntax errors and binary chunks.
    pub fn check(&self) -> Result<(), LuaError> {
        engine::with_engine(|e| e.function(self).map(drop))
    }
}

impl std::fmt::Debug for LuaScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaScript")
            .field("hash", &format_args!("{:016x}", self.hash))
            .field("len", &self.source.len())
            .field("names", &self.names)
            .field("simple", &self.simple)
            .finish()
    }
}

impl PartialEq for LuaScript {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.source == other.source
    }
}

impl Eq for LuaScript {}

/// The run's inputs as an execution is given them (`&Value` and `&Arc<Value>` convert into
/// this). Either way the script's `inputs` is read-only (see the crate docs).
#[derive(Debug, Clone, Copy)]
pub enum Inputs<'a> {
    /// Converted for this execution alone.
    Once(&'a Value),
    /// The inputs of a run whose nodes all get this `Arc`: converted once per thread's Lua
    /// state, and the same tables handed to every later execution given the same `Arc`
    /// (until one is given other inputs).
    Shared(&'a Arc<Value>),
}

impl<'a> Inputs<'a> {
    /// The inputs' value.
    pub fn value(self) -> &'a Value {
        match self {
            Inputs::Once(v) => v,
            Inputs::Shared(v) => v,
        }
    }
}

impl<'a> From<&'a Value> for Inputs<'a> {
    fn from(v: &'a Value) -> Self {
        Inputs::Once(v)
    }
}

impl<'a> From<&'a Arc<Value>> for Inputs<'a> {
    fn from(v: &'a Arc<Value>) -> Self {
        Inputs::Shared(v)
    }
}

/// Identity of the node being executed, exposed to the script as `ctx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo<'a> {
    /// The node's id; runtime error messages name it in place of the chunk.
    pub node_id: &'a str,
    /// The workflow run's id.
    pub run_id: &'a str,
    /// Attempt number of this execution.
    pub attempt: u32,
}

/// Result of a successful execution.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LuaOutput {
    /// The table returned by the script (empty if it returned nothing).
    pub output: Map<String, Value>,
    /// Lines written with `log`/`print`, in order.
    pub logs: Vec<String>,
}

/// Why an execution failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LuaError {
    /// The script does not compile (or is a binary chunk).
    #[error("syntax error{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Syntax {
        /// Line of the error, when Lua reported one.
        line: Option<u32>,
        /// Lua's message without the chunk name and line prefix.
        message: String,
    },
    /// `error(...)` or a runtime error; the message carries Lua's
    /// `chunk:line:` prefix.
    #[error("{message}")]
    Runtime {
        /// The error message.
        message: String,
        /// Lua stack traceback, when available.
        traceback: Option<String>,
    },
    /// The instruction budget ran out.
    #[error("exceeded the instruction limit of {limit}")]
    InstructionLimit {
        /// The configured budget.
        limit: u64,
    },
    /// The script allocated more than allowed.
    #[error("exceeded the memory limit of {limit} bytes")]
    MemoryLimit {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The wall-time limit passed.
    #[error("exceeded the wall-time limit of {limit:?}")]
    Timeout {
        /// The configured limit.
        limit: Duration,
    },
    /// The cancel flag was raised.
    #[error("execution was cancelled")]
    Cancelled,
    /// The script returned something other than a table or nothing.
    #[error("{message}")]
    BadReturn {
        /// Says what was returned.
        message: String,
    },
    /// A value cannot be converted between Lua and JSON.
    #[error("cannot convert the value at {path}: {message}")]
    Conversion {
        /// Where the value is, e.g. `result.items[2].callback`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl LuaError {
    /// The error's kind: the `type` of the node's error and the Python exception's class.
    pub const fn kind(&self) -> ErrorKind {
        match self {
            LuaError::Syntax { .. } => ErrorKind::LuaSyntaxError,
            LuaError::Runtime { .. } => ErrorKind::LuaRuntimeError,
            LuaError::InstructionLimit { .. } => ErrorKind::LuaInstructionLimit,
            LuaError::MemoryLimit { .. } => ErrorKind::LuaMemoryLimit,
            LuaError::Timeout { .. } => ErrorKind::LuaTimeout,
            LuaError::Cancelled => ErrorKind::RunCancelled,
            LuaError::BadReturn { .. } => ErrorKind::LuaBadReturn,
            LuaError::Conversion { .. } => ErrorKind::LuaConversionError,
        }
    }
}

/// Runs `script` for one node on this thread's pooled Lua state.
///
/// `inputs` becomes the global `inputs`, `results` the global `results`
/// (parent id -> output), `info` the global `ctx`. Raising `cancel` stops the
/// script at the next hook check with [`LuaError::Cancelled`].
pub fn execute<'a>(
    script: &LuaScript,
    inputs: impl Into<Inputs<'a>>,
    results: &[(&str, &Value)],
    info: &NodeInfo<'_>,
    limits: &LuaLimits,
    cancel: Option<&AtomicBool>,
) -> Result<LuaOutput, LuaError> {
    execute_item(script, inputs, results, info, None, limits, cancel)
}

/// Runs `script` like [`execute`] for one item of a mapped node: `item` is its index
/// (from 0) and value, the globals `index` and `item` and the fields `ctx.index` and
/// `ctx.item`. With `None` it is [`execute`].
pub fn execute_item<'a>(
    script: &LuaScript,
    inputs: impl Into<Inputs<'a>>,
    results: &[(&str, &Value)],
    info: &NodeInfo<'_>,
    item: Option<(u32, &Value)>,
    limits: &LuaLimits,
    cancel: Option<&AtomicBool>,
) -> Result<LuaOutput, LuaError> {
    execute_item_preemptible(script, inputs, results, info, item, limits, cancel, None)
}

/// Runs `script` like [`execute_item`], and stops it at `preempt_at` (when given) if it is
/// still running then, with [`LuaError::Timeout`] as at its wall-time limit (whose `limit`
/// it reports). Unlike a timeout under 20 ms, `preempt_at` does not have the hook set from
/// the script's first instruction, which costs a short script about a tenth of its time:
/// it is watched like a distant deadline, by the watchdog (see the crate docs), so the
/// script stops about 2 ms after it. For a host that wants the thread back soon and can
/// run the script again elsewhere (a script has no effects).
#[allow(clippy::too_many_arguments)]
pub fn execute_item_preemptible<'a>(
    script: &LuaScript,
    inputs: impl Into<Inputs<'a>>,
    results: &[(&str, &Value)],
    info: &NodeInfo<'_>,
    item: Option<(u32, &Value)>,
    limits: &LuaLimits,
    cancel: Option<&AtomicBool>,
    preempt_at: Option<Instant>,
) -> Result<LuaOutput, LuaError> {
    engine::take_failed_logs();
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(LuaError::Cancelled);
    }
    let given = engine::Given {
        inputs: inputs.into(),
        results,
        item,
    };
    engine::with_engine(|e| e.execute(script, &given, info, limits, cancel, preempt_at))
}

/// The `log`/`print` lines the calling thread's last [`execute`] wrote before it failed
/// (a script error, a limit, a timeout, a cancel), in order; empty after a success, and
/// emptied by the call. [`LuaOutput::logs`] carries a successful execution's lines.
pub fn take_failed_logs() -> Vec<String> {
    engine::take_failed_logs()
}

/// Runs `script` like [`execute`] and reads its value as a condition: `Ok(Ok(b))` for a
/// boolean, `Ok(Err(what))` for anything else (`what` describes it: `nil`, `a number (3)`,
/// `a string ("yes")`, `a table`), `Err` when the script failed.
///
/// A script that only returns `true`, `false` or a field of `inputs` or of a parent's
/// output (`return (inputs.go)`, `return results.a.ok`) is answered without Lua when
/// that field holds a boolean: what Lua would return, at a fraction of the cost.
pub fn evaluate_bool<'a>(
    script: &LuaScript,
    inputs: impl Into<Inputs<'a>>,
    results: &[(&str, &Value)],
    info: &NodeInfo<'_>,
    limits: &LuaLimits,
    cancel: Option<&AtomicBool>,
) -> Result<Result<bool, String>, LuaError> {
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(LuaError::Cancelled);
    }
    let inputs = inputs.into();
    if let Some(b) = script
        .simple
        .and_then(|s| s.value(&script.source, inputs.value(), results))
    {
        return Ok(Ok(b));
    }
    engine::with_engine(|e| e.evaluate_bool(script, inputs, results, info, limits, cancel))
}

/// Runs `script` like [`execute`] and reads its value as JSON (a map expression's list):
/// `Ok(Ok(value))` for a table (an array, or an object: `{}` converts to one) converted to
/// JSON, `Ok(Err(what))` for anything else (described as by [`evaluate_bool`]), `Err` when
/// the script failed.
pub fn evaluate_json<'a>(
    script: &LuaScript,
    inputs: impl Into<Inputs<'a>>,
    results: &[(&str, &Value)],
    info: &NodeInfo<'_>,
    limits: &LuaLimits,
    cancel: Option<&AtomicBool>,
) -> Result<Result<Value, String>, LuaError> {
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(LuaError::Cancelled);
    }
    let inputs = inputs.into();
    engine::with_engine(|e| e.evaluate_json(script, inputs, results, info, limits, cancel))
}

/// How many times the inputs of an execution were converted into Lua tables so far, in
/// this process: once per execution given them as [`Inputs::Once`], once per run and
/// thread given them as [`Inputs::Shared`]; for tests.
pub fn inputs_conversions() -> u64 {
    engine::inputs_conversions()
}

/// Number of chunks compiled on the calling thread so far (compile-cache
/// misses, including [`LuaScript::check`]); for tests and metrics.
pub fn compiled_chunks() -> u64 {
    engine::compiled_chunks()
}

/// Scripts so far in this process that ran long enough for the watchdog to set their
/// limit hook late (see the crate docs); for tests and metrics.
pub fn late_hooks() -> u64 {
    watchdog::signals_sent()
}

/// Drops the calling thread's pooled Lua state and its compile cache; the
/// next execution on this thread builds a fresh one.
pub fn reset_thread_state() {
    engine::reset_thread_state();
}
