//! Multi-step operations as persisted state machines (Mayastor's habit): every
//! phase an operation enters is written to the store *before* the work of that
//! phase starts, so a controller that crashes finds, after its restart, the
//! phase it was in and runs it again. Each phase's work must therefore be
//! idempotent (creating what exists, or deleting what is gone, succeeds), and
//! the record says which resources a phase may have left half made: nothing is
//! leaked and nothing is done twice.
//!
//! The record ([`OperationRecord`]) lives in the status of the object the
//! operation works on; [`Journal`] is how it is written there.
//!
//! ```text
//! run(machine, journal, record):
//!   phase = record.phase if record.kind == machine's kind, else machine.first()
//!   loop: save(phase) -> step(phase) -> Next(p): phase = p | Done: save(None)
//!                                     | Wait: return (run again later)
//!   on a step error: save(phase, attempts + 1, last_error) and return it
//! ```

use std::fmt::{Debug, Display};
use std::future::Future;
use std::str::FromStr;

pub use lightpool_model::OperationRecord;

/// What went wrong running an operation.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// The phase's work failed; the record keeps the phase, the attempt count and
    /// this message, and the caller retries later.
    #[error("{kind} failed in phase {phase} (attempt {attempts}): {message}")]
    Step {
        kind: String,
        phase: String,
        attempts: u32,
        message: String,
    },
    /// The record could not be written: nothing after the last saved phase ran.
    #[error("could not record {kind} entering {phase}: {message}")]
    Journal {
        kind: String,
        phase: String,
        message: String,
    },
    /// The record names a phase this machine does not have (written by another
    /// version?): it is left as it is for a person to look at.
    #[error("{kind} record has the unknown phase '{phase}'")]
    UnknownPhase { kind: String, phase: String },
    /// A different operation is recorded on the object.
    #[error("a {running} operation is in progress on this object; {wanted} waits for it")]
    Busy { running: String, wanted: String },
}

/// What a phase's work leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<P> {
    /// Enter this phase next.
    Next(P),
    /// The phase waits for something outside (another component's work): stay
    /// in it, nothing written, and try again later. Not a failure.
    Wait,
    /// The operation is complete.
    Done,
}

/// Where a run stopped without failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Complete; the record is cleared.
    Done,
    /// Waiting in this phase (recorded); run again later.
    Waiting(String),
}

/// An operation: named phases and the work of each.
pub trait Machine: Send {
    /// The phases; `Display`/`FromStr` are their persisted names.
    type Phase: Copy + Eq + Debug + Display + FromStr + Send;
    /// The error of a phase's work.
    type Error: Display + Send;

    /// The operation's kind, as recorded (e.g. "VolumeCreate").
    fn kind(&self) -> &'static str;

    /// The phase a new operation starts in.
    fn first(&self) -> Self::Phase;

    /// Does the (idempotent) work of `phase`. `data` is what earlier phases
    /// recorded for later ones; the step may change it and it is saved with the
    /// next phase.
    fn step(
        &mut self,
        phase: Self::Phase,
        data: &mut Option<String>,
    ) -> impl Future<Output = Result<Step<Self::Phase>, Self::Error>> + Send;
}

/// Where the record is kept (the object's status).
pub trait Journal: Send {
    /// The error of a write.
    type Error: Display;

    /// Writes the record; `None` clears it (the operation is done). Returns
    /// only once the write is durable.
    fn save(
        &mut self,
        record: Option<&OperationRecord>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Runs `machine` from `record` (an earlier run's, found after a restart) or
/// from its first phase, to completion or to the first failing step.
pub async fn run<M: Machine, J: Journal>(
    machine: &mut M,
    journal: &mut J,
    record: Option<OperationRecord>,
) -> Result<Progress, OperationError> {
    let kind = machine.kind();
    let (mut phase, mut attempts, mut data) = match record {
        Some(r) if r.kind == kind => {
            let phase = r
                .phase
                .parse::<M::Phase>()
                .map_err(|_| OperationError::UnknownPhase {
                    kind: kind.into(),
                    phase: r.phase.clone(),
                })?;
            tracing::info!(kind, phase = %r.phase, attempts = r.attempts, "resuming operation");
            (phase, r.attempts, r.data)
        }
        Some(r) => {
            return Err(OperationError::Busy {
                running: r.kind,
                wanted: kind.into(),
            })
        }
        None => {
            let first = machine.first();
            save(journal, kind, first, 0, None, None).await?;
            (first, 0, None)
        }
    };
    loop {
        match machine.step(phase, &mut data).await {
            Ok(Step::Next(next)) => {
                attempts = 0;
                save(journal, kind, next, 0, None, data.clone()).await?;
                phase = next;
            }
            Ok(Step::Wait) => {
                if attempts > 0 {
                    // The failure before is over: the record says so.
                    save(journal, kind, phase, 0, None, data.clone()).await?;
                }
                return Ok(Progress::Waiting(phase.to_string()));
            }
            Ok(Step::Done) => {
                journal
                    .save(None)
                    .await
                    .map_err(|e| OperationError::Journal {
                        kind: kind.into(),
                        phase: "Done".into(),
                        message: e.to_string(),
                    })?;
                return Ok(Progress::Done);
            }
            Err(e) => {
                attempts += 1;
                let message = e.to_string();
                // Best effort: the failure is returned whether or not it is recorded.
                let _ = save(
                    journal,
                    kind,
                    phase,
                    attempts,
                    Some(message.clone()),
                    data.clone(),
                )
                .await;
                return Err(OperationError::Step {
                    kind: kind.into(),
                    phase: phase.to_string(),
                    attempts,
                    message,
                });
            }
        }
    }
}

async fn save<J: Journal, P: Display>(
    journal: &mut J,
    kind: &str,
    phase: P,
    attempts: u32,
    last_error: Option<String>,
    data: Option<String>,
) -> Result<(), OperationError> {
    let record = OperationRecord {
        kind: kind.into(),
        phase: phase.to_string(),
        attempts,
        last_error,
        data,
    };
    journal
        .save(Some(&record))
        .await
        .map_err(|e| OperationError::Journal {
            kind: kind.into(),
            phase: record.phase.clone(),
            message: e.to_string(),
        })
}

/// Declares a phase enum with its persisted names (`Display` and `FromStr`).
#[macro_export]
macro_rules! phases {
    ($(#[$m:meta])* $v:vis enum $name:ident { $($(#[$vm:meta])* $p:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $v enum $name { $($(#[$vm])* $p),+ }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(match self { $($name::$p => stringify!($p)),+ })
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $(stringify!($p) => Ok($name::$p),)+ _ => Err(()) }
            }
        }
    };
}

#[cfg(test)]
mod tests;
