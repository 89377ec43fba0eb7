use std::collections::BTreeSet;

use super::*;

phases! {
    enum P { Reserve, Create, Publish }
}

/// A world with resources that steps make idempotently, and a crash switch:
/// the step of `crash_in` fails once, as a controller killed there would stop.
#[derive(Default)]
struct World {
    made: BTreeSet<&'static str>,
    /// How often each resource's create ran and did something.
    created: Vec<&'static str>,
    crash_in: Option<P>,
}

struct Create<'a> {
    world: &'a mut World,
}

impl Machine for Create<'_> {
    type Phase = P;
    type Error = String;
    fn kind(&self) -> &'static str {
        "VolumeCreate"
    }
    fn first(&self) -> P {
        P::Reserve
    }
    async fn step(&mut self, phase: P, data: &mut Option<String>) -> Result<Step<P>, String> {
        let (res, next) = match phase {
            P::Reserve => ("reservation", Step::Next(P::Create)),
            P::Create => ("pool-volume", Step::Next(P::Publish)),
            P::Publish => ("subsystem", Step::Done),
        };
        // The work is idempotent: made once, whatever the retries.
        if self.world.made.insert(res) {
            self.world.created.push(res);
        }
        if phase == P::Reserve {
            *data = Some("pool-a".into());
        }
        if self.world.crash_in == Some(phase) {
            self.world.crash_in = None;
            return Err(format!("killed after making {res}"));
        }
        Ok(next)
    }
}

#[derive(Default)]
struct Log {
    saved: Vec<Option<OperationRecord>>,
    fail: bool,
}

impl Journal for Log {
    type Error = String;
    async fn save(&mut self, r: Option<&OperationRecord>) -> Result<(), String> {
        if self.fail {
            return Err("store unavailable".into());
        }
        self.saved.push(r.cloned());
        Ok(())
    }
}

fn phases(log: &Log) -> Vec<String> {
    log.saved
        .iter()
        .map(|r| r.as_ref().map_or("-".into(), |r| r.phase.clone()))
        .collect()
}

#[tokio::test]
async fn each_phase_is_recorded_before_its_work_and_the_record_cleared_at_the_end() {
    let mut world = World::default();
    let mut log = Log::default();
    run(&mut Create { world: &mut world }, &mut log, None)
        .await
        .unwrap();
    assert_eq!(phases(&log), ["Reserve", "Create", "Publish", "-"]);
    assert_eq!(log.saved.len(), 4);
    assert_eq!(
        log.saved[1].as_ref().unwrap().data.as_deref(),
        Some("pool-a"),
        "data from a phase travels with the next"
    );
    assert_eq!(world.created, ["reservation", "pool-volume", "subsystem"]);
}

#[tokio::test]
async fn a_crash_in_any_phase_resumes_there_and_makes_nothing_twice() {
    for crash in [P::Reserve, P::Create, P::Publish] {
        let mut world = World {
            crash_in: Some(crash),
            ..Default::default()
        };
        let mut log = Log::default();
        let err = run(&mut Create { world: &mut world }, &mut log, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OperationError::Step { phase, attempts: 1, .. } if *phase == crash.to_string()),
            "{err}"
        );
        let record = log.saved.last().cloned().unwrap().unwrap();
        assert_eq!(record.phase, crash.to_string());
        assert_eq!(record.attempts, 1);
        assert!(record.last_error.unwrap().contains("killed"));
        // The restart: a new machine over the same world, from the saved record.
        let record = log.saved.last().cloned().unwrap();
        run(&mut Create { world: &mut world }, &mut log, record)
            .await
            .unwrap();
        assert_eq!(
            world.created,
            ["reservation", "pool-volume", "subsystem"],
            "crash in {crash}: each made once"
        );
        assert_eq!(log.saved.last().unwrap(), &None);
        let before_crash = log
            .saved
            .iter()
            .filter(|r| r.as_ref().is_some_and(|r| r.phase == "Reserve"))
            .count();
        assert!(before_crash >= 1);
    }
}

#[tokio::test]
async fn nothing_runs_when_the_first_phase_cannot_be_recorded() {
    let mut world = World::default();
    let mut log = Log {
        fail: true,
        ..Default::default()
    };
    let err = run(&mut Create { world: &mut world }, &mut log, None)
        .await
        .unwrap_err();
    assert!(matches!(err, OperationError::Journal { .. }), "{err}");
    assert!(world.created.is_empty());
}

#[tokio::test]
async fn another_operation_on_the_object_or_an_unknown_phase_is_refused() {
    let mut world = World::default();
    let mut log = Log::default();
    let other = OperationRecord {
        kind: "VolumeDelete".into(),
        phase: "Unpublish".into(),
        attempts: 0,
        last_error: None,
        data: None,
    };
    let err = run(&mut Create { world: &mut world }, &mut log, Some(other))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("VolumeDelete"), "{err}");
    let bad = OperationRecord {
        kind: "VolumeCreate".into(),
        phase: "Frobnicate".into(),
        attempts: 0,
        last_error: None,
        data: None,
    };
    let err = run(&mut Create { world: &mut world }, &mut log, Some(bad))
        .await
        .unwrap_err();
    assert!(matches!(err, OperationError::UnknownPhase { .. }), "{err}");
    assert!(world.created.is_empty() && log.saved.is_empty());
}

struct Waits {
    ready: bool,
}

impl Machine for Waits {
    type Phase = P;
    type Error = String;
    fn kind(&self) -> &'static str {
        "VolumeCreate"
    }
    fn first(&self) -> P {
        P::Publish
    }
    async fn step(&mut self, _: P, _: &mut Option<String>) -> Result<Step<P>, String> {
        Ok(if self.ready { Step::Done } else { Step::Wait })
    }
}

#[tokio::test]
async fn a_waiting_phase_writes_nothing_until_it_moves_on() {
    let mut log = Log::default();
    let mut m = Waits { ready: false };
    let p = run(&mut m, &mut log, None).await.unwrap();
    assert_eq!(p, Progress::Waiting("Publish".into()));
    let rec = log.saved.last().cloned().unwrap();
    for _ in 0..3 {
        run(&mut m, &mut log, rec.clone()).await.unwrap();
    }
    assert_eq!(log.saved.len(), 1, "waiting is not written again");
    m.ready = true;
    assert_eq!(run(&mut m, &mut log, rec).await.unwrap(), Progress::Done);
    assert_eq!(phases(&log), ["Publish", "-"]);
}
