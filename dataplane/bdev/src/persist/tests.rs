use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::*;
use crate::{BdevInfo, IoChannel};

/// A device for the graph tests: a name, a kind, children, whether it exports at pause,
/// and a descriptor (a pipe end) it exports.
struct Fake {
    info: BdevInfo,
    kind: &'static str,
    children: Vec<Arc<dyn Bdev>>,
    at_pause: bool,
    fd: Option<OwnedFd>,
    adopted: Mutex<u32>,
}

fn fake(
    name: &str,
    kind: &'static str,
    children: Vec<Arc<dyn Bdev>>,
    at_pause: bool,
) -> Arc<dyn Bdev> {
    let (r, _w) = std::io::pipe().expect("pipe");
    Arc::new(Fake {
        info: BdevInfo {
            name: name.into(),
            block_size: 512,
            num_blocks: 8,
            read_only: false,
            volatile_write_cache: false,
            supports_deallocate: false,
        },
        kind,
        children,
        at_pause,
        fd: Some(r.into()),
        adopted: Mutex::new(0),
    })
}

impl Bdev for Fake {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        self.children.clone()
    }
    fn export(&self) -> Result<Export, BdevError> {
        if self.kind == "stubborn" {
            return Err(BdevError::Invalid("it will not".into()));
        }
        Ok(Export {
            state: self.info.name.as_bytes().to_vec(),
            fds: self
                .fd
                .iter()
                .map(|f| f.as_fd().try_clone_to_owned().expect("dup"))
                .collect(),
        })
    }
    fn export_at_pause(&self) -> bool {
        self.at_pause
    }
    fn adopted(&self) {
        *self.adopted.lock().expect("lock") += 1;
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Err(BdevError::Invalid("no I/O".into()))
    }
}

/// Rebuilds fakes: checks the state is the name and that it got one descriptor per
/// record (none when recovering), and keeps the children it was given.
struct FakeAdopter(&'static str);

impl Adopter for FakeAdopter {
    fn kind(&self) -> &'static str {
        self.0
    }
    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        assert_eq!(a.state, a.name.as_bytes());
        let fd = match a.fds {
            Some(mut f) => {
                assert_eq!(f.len(), 1);
                f.pop()
            }
            None if self.0 == "leaf" => {
                return Err(BdevError::Invalid("needs its descriptor".into()))
            }
            None => None,
        };
        Ok(Arc::new(Fake {
            info: BdevInfo {
                name: a.name.to_string(),
                block_size: 512,
                num_blocks: 8,
                read_only: false,
                volatile_write_cache: false,
                supports_deallocate: false,
            },
            kind: self.0,
            children: a.children,
            at_pause: false,
            fd,
            adopted: Mutex::new(0),
        }))
    }
}

fn adopters() -> Adopters {
    let mut a = Adopters::new();
    a.register(Box::new(FakeAdopter("leaf")))
        .register(Box::new(FakeAdopter("stack")));
    a
}

/// Two volumes stacked on one pool over two disks: the pool and the disks are one node
/// each, children come first, and the ids of the roots name the volumes.
#[test]
fn shared_children_are_walked_once_children_first() {
    let d0 = fake("d0", "leaf", vec![], false);
    let d1 = fake("d1", "leaf", vec![], false);
    let pool = fake("pool", "stack", vec![d0.clone(), d1.clone()], false);
    let v1 = fake("v1", "stack", vec![pool.clone()], false);
    let v2 = fake("v2", "stack", vec![pool.clone()], false);
    let g = DeviceGraph::walk([&v1, &v2, &v1]);
    let names: Vec<String> = g.devices().map(|d| d.info().name.clone()).collect();
    assert_eq!(names, ["d0", "d1", "pool", "v1", "v2"]);
    assert_eq!(g.id_of(&v2), Some(4));
    assert_eq!(g.id_of(&pool), Some(2));
    let mut fds = Vec::new();
    let recs = g.export(|_| true, &mut fds, 3).expect("export");
    assert_eq!(fds.len(), 5);
    assert_eq!(recs[2].children, [0, 1]);
    assert_eq!(recs[3].children, [2]);
    assert_eq!(recs[4].fds, [7]);
    assert_eq!(recs[4].kind, "stack");

    let mut fds: Vec<Option<OwnedFd>> = (0..3)
        .map(|_| None)
        .chain(fds.into_iter().map(Some))
        .collect();
    let mut devs = BTreeMap::new();
    let mut take = |i: usize| fds.get_mut(i).and_then(Option::take);
    adopters()
        .adopt_all(&recs, &mut devs, Some(&mut take))
        .expect("adopt");
    assert_eq!(devs.len(), 5);
    let v2n = &devs[&4];
    let pool_n = &v2n.children()[0];
    assert!(
        Arc::ptr_eq(pool_n, &devs[&2]),
        "one pool under both volumes"
    );
    assert!(Arc::ptr_eq(&devs[&3].children()[0], &devs[&2]));
    assert_eq!(pool_n.children()[1].info().name, "d1");
}

/// A device stacked on one that exports at pause exports at pause too; a boot record
/// (state only for the others) still names its kind and place.
#[test]
fn at_pause_propagates_up_the_stack() {
    let ssd = fake("ssd", "leaf", vec![], true);
    let ram = fake("ram", "leaf", vec![], false);
    let vol = fake("vol", "stack", vec![ssd.clone()], false);
    let g = DeviceGraph::walk([&vol, &ram]);
    assert!(g.any_at_pause());
    let mut fds = Vec::new();
    let boot = g.export(|at_pause| !at_pause, &mut fds, 0).expect("export");
    assert_eq!(
        boot.iter()
            .map(|r| (r.name.as_str(), r.at_pause))
            .collect::<Vec<_>>(),
        [("ssd", true), ("vol", true), ("ram", false)]
    );
    assert!(boot[1].state.is_empty() && boot[1].fds.is_empty());
    assert_eq!(boot[1].kind, "stack");
    assert_eq!((boot[2].fds.as_slice(), fds.len()), (&[0][..], 1));

    // Before the pause the successor adopts what it can; at the pause the rest, with
    // the earlier devices reused by id.
    let mut devs = BTreeMap::new();
    let mut early: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let early_recs: Vec<DeviceRecord> = boot.iter().filter(|r| !r.at_pause).cloned().collect();
    let mut take = |i: usize| early.get_mut(i).and_then(Option::take);
    adopters()
        .adopt_all(&early_recs, &mut devs, Some(&mut take))
        .expect("early");
    let mut fds = Vec::new();
    let pause = g.export(|at_pause| at_pause, &mut fds, 0).expect("pause");
    let mut late: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |i: usize| late.get_mut(i).and_then(Option::take);
    adopters()
        .adopt_all(&pause, &mut devs, Some(&mut take))
        .expect("late");
    assert_eq!(devs.len(), 3);
    assert_eq!(devs[&1].children()[0].info().name, "ssd");
}

/// Refusals name the device and what is wrong.
#[test]
fn refusals_name_the_device() {
    let d = fake("d0", "stubborn", vec![], false);
    let e = DeviceGraph::walk([&d])
        .export(|_| true, &mut Vec::new(), 0)
        .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "block device d0 cannot be handed over: it will not"
    );

    let rec = |kind: &str, fds: Vec<usize>, children: Vec<u32>| DeviceRecord {
        id: 0,
        kind: kind.into(),
        name: "x".into(),
        state: b"x".to_vec(),
        fds,
        children,
        at_pause: false,
    };
    let mut devs = BTreeMap::new();
    let e = adopters()
        .adopt_all(&[rec("raid9", vec![], vec![])], &mut devs, None)
        .expect_err("unknown");
    assert!(e.to_string().contains("kind raid9"), "{e}");
    let mut none = |_: usize| None;
    let e = adopters()
        .adopt_all(&[rec("leaf", vec![4], vec![])], &mut devs, Some(&mut none))
        .expect_err("missing fd");
    assert!(e.to_string().contains("descriptor 4"), "{e}");
    let e = adopters()
        .adopt_all(&[rec("stack", vec![], vec![9])], &mut devs, None)
        .expect_err("missing child");
    assert!(e.to_string().contains("device 9"), "{e}");
    // Recovery: no descriptors; the leaf adopter refuses with its reason.
    let e = adopters()
        .adopt_all(&[rec("leaf", vec![0], vec![])], &mut devs, None)
        .expect_err("recovery refused");
    assert!(e.to_string().contains("needs its descriptor"), "{e}");
    assert!(devs.is_empty());
}
