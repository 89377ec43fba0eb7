//! Authentication Send / Receive on a queue: the commands that carry a DH-HMAC-CHAP
//! transaction (see [`crate::auth::exchange`]), and what its outcome does to the queue.
//! Control path only: a live queue reaches here only when its host re-authenticates.

use std::time::Instant;

use lightpool_spec::auth::{failure, AuthCommand};
use lightpool_spec::nvme;
use lightpool_spec::status::{generic, Status};

use crate::auth::{auth_timeout, Event, Exchange, Peer};
use crate::ctrlr::Controller;
use crate::queue::{gate, Exec, NvmfQueue, QueueState, SlotState};
use crate::region::slot as rslot;
use crate::Xfer;

fn invalid_field() -> Status {
    Status::generic(generic::INVALID_FIELD).with_dnr()
}

impl<T: Default> NvmfQueue<T> {
    /// After a Connect: whether the host must authenticate on this queue (the
    /// subsystem holds keys for it); if so the queue refuses all but Authentication
    /// Send/Receive until it has. Returns the AUTHREQ bits of the Connect response.
    pub(crate) fn require_auth(&mut self) -> u32 {
        let Some(c) = &self.ctrlr else { return 0 };
        if c.subsys.host_keys(&c.hostnqn).is_none() {
            return 0;
        }
        self.gate |= gate::UNAUTHENTICATED;
        self.auth = Some(Box::new(Exchange::new()));
        self.arm_auth_deadline(true);
        self.publish_queue_static();
        lightpool_spec::auth::AUTHREQ_ATR
    }

    /// A command on a gated queue: held while quiesced; refused with Authentication
    /// Required while the host has not authenticated, unless it is Authentication
    /// Send/Receive. `None`: run it.
    #[cold]
    pub(crate) fn gated(&mut self, slot: u16) -> Option<Exec> {
        if self.gate & gate::QUIESCED != 0 {
            self.slots[usize::from(slot)].state = SlotState::Held;
            self.held.push_back(slot);
            if let Some(m) = &self.shm {
                m.set_slot_state(slot, rslot::HELD);
            }
            return Some(Exec::Pending);
        }
        let sqe = &self.slots[usize::from(slot)].sqe;
        let auth_cmd = sqe.opcode == nvme::admin_opcode::FABRICS
            && matches!(
                lightpool_spec::fabrics::fctype(sqe),
                lightpool_spec::fabrics::fctype::AUTH_SEND
                    | lightpool_spec::fabrics::fctype::AUTH_RECV
            );
        if self.gate & gate::UNAUTHENTICATED != 0 && !auth_cmd {
            self.finish(
                slot,
                Status::command_specific(
                    lightpool_spec::status::command_specific::AUTHENTICATION_REQUIRED,
                )
                .with_dnr(),
            );
            return Some(Exec::Done);
        }
        None
    }

    /// A connection that ends before its host authenticated: say so (the host had no
    /// key, or gave up).
    pub(crate) fn note_unauthenticated_close(&self, c: &Controller) {
        if self.gate & gate::UNAUTHENTICATED != 0 && self.state == QueueState::Live {
            tracing::warn!(
                subnqn = %c.subsys.nqn,
                hostnqn = %c.hostnqn,
                cntlid = c.cntlid,
                qid = self.qid,
                "connection closed before the host authenticated"
            );
        }
    }

    /// After a Connect that requires authentication and after each authentication
    /// message: the host has [`auth_timeout`] for its next step while a transaction
    /// is under way or the queue still waits for one; otherwise no deadline.
    fn arm_auth_deadline(&mut self, waiting: bool) {
        let kato = self.ctrlr.as_ref().map_or(0, |c| c.kato_ms());
        self.auth_deadline = waiting.then(|| Instant::now() + auth_timeout(kato));
    }

    /// The host let an authentication transaction run out of time. A queue that
    /// never authenticated can do nothing else, so it closes (its host may connect
    /// again); an authenticated queue whose re-authentication stalled keeps serving
    /// and the transaction is forgotten, so that the host's next Negotiate starts
    /// afresh (Linux nvmet resets it the same way).
    #[cold]
    pub(crate) fn auth_expired(&mut self) {
        self.auth_deadline = None;
        let Some(c) = self.ctrlr.clone() else { return };
        let never = self.gate & gate::UNAUTHENTICATED != 0;
        tracing::warn!(
            subnqn = %c.subsys.nqn,
            hostnqn = %c.hostnqn,
            cntlid = c.cntlid,
            qid = self.qid,
            timeout_s = auth_timeout(c.kato_ms()).as_secs(),
            "{}",
            if never {
                "the host did not finish authenticating in time: closing the queue"
            } else {
                "re-authentication stalled: transaction abandoned, the queue stays authenticated"
            }
        );
        if never {
            self.state = QueueState::Disconnecting;
        } else {
            self.auth = Some(Box::new(Exchange::new()));
        }
        self.publish_queue_static();
    }

    /// Whether the host authenticated in-band on this queue (and has not started
    /// failing since).
    pub fn is_authenticated(&self) -> bool {
        self.auth.is_some() && self.gate & gate::UNAUTHENTICATED == 0
    }

    /// Whether the queue still waits for its host to authenticate.
    pub fn is_authenticating(&self) -> bool {
        self.gate & gate::UNAUTHENTICATED != 0
    }

    fn auth_command(&mut self, slot: u16) -> Result<AuthCommand, Status> {
        let cmd = AuthCommand::parse(&self.req(slot).sqe);
        if cmd.check_protocol().is_err() || cmd.len == 0 {
            return Err(invalid_field());
        }
        Ok(cmd)
    }

    pub(crate) fn auth_send(&mut self, slot: u16) -> Result<Exec, Status> {
        let cmd = self.auth_command(slot)?;
        let len = match self.req(slot).xfer {
            Xfer::H2C { len, .. } => len,
            _ => 0,
        };
        if len != cmd.len {
            return Err(Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr());
        }
        let c = self.ctrlr.clone().expect("dispatch checked the controller");
        let peer = Peer {
            hostnqn: &c.hostnqn,
            subnqn: &c.subsys.nqn,
            keys: c.subsys.host_keys(&c.hostnqn),
        };
        let mut x = self.auth.take().unwrap_or_default();
        let data = self.slots[usize::from(slot)].buf(len as usize);
        let ev = x.send(data, &peer);
        let waiting = x.in_progress();
        self.auth = Some(x);
        self.arm_auth_deadline(waiting || self.gate & gate::UNAUTHENTICATED != 0);
        self.auth_event(ev);
        Ok(Exec::Done)
    }

    pub(crate) fn auth_recv(&mut self, slot: u16) -> Result<Exec, Status> {
        let cmd = self.auth_command(slot)?;
        let al = match self.req(slot).xfer {
            Xfer::C2H { len } => len,
            _ => 0,
        };
        if al != cmd.len {
            return Err(Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr());
        }
        let c = self.ctrlr.clone().expect("dispatch checked the controller");
        let peer = Peer {
            hostnqn: &c.hostnqn,
            subnqn: &c.subsys.nqn,
            keys: None,
        };
        let mut x = self.auth.take().unwrap_or_default();
        let out = self.slots[usize::from(slot)].buf_mut(al as usize);
        out.fill(0);
        let res = x.receive(out, &peer);
        let waiting = x.in_progress();
        self.auth = Some(x);
        self.arm_auth_deadline(waiting || self.gate & gate::UNAUTHENTICATED != 0);
        match res {
            Ok((_, ev)) => {
                // The whole allocation goes back, zero-padded past the message, as
                // Linux's nvmet sends it.
                self.req(slot).c2h_len = al;
                self.auth_event(ev);
                Ok(Exec::Done)
            }
            Err(e) => {
                tracing::warn!(
                    subnqn = %c.subsys.nqn,
                    hostnqn = %c.hostnqn,
                    qid = self.qid,
                    error = %e,
                    "authentication receive refused"
                );
                Err(invalid_field())
            }
        }
    }

    /// Apply a transaction's outcome: open the queue, or close it once the response
    /// (AUTH_Failure1, or the Send that carried the host's AUTH_Failure2) is out; the
    /// admin queue's close fails the controller and so its I/O queues. Other hosts'
    /// connections are untouched.
    fn auth_event(&mut self, ev: Event) {
        let c = self.ctrlr.clone().expect("dispatch checked the controller");
        match ev {
            Event::None => {}
            Event::Authenticated => {
                let (hash, dh) = self.auth.as_ref().map(|x| x.selected()).unzip();
                let reauth = self.gate & gate::UNAUTHENTICATED == 0;
                self.gate &= !gate::UNAUTHENTICATED;
                self.auth_deadline = None;
                self.publish_queue_static();
                tracing::info!(
                    subnqn = %c.subsys.nqn,
                    hostnqn = %c.hostnqn,
                    cntlid = c.cntlid,
                    qid = self.qid,
                    hash = hash.map(|h| h.name()),
                    dhgroup = dh.map(|g| g.name()),
                    reauth,
                    "host authenticated"
                );
            }
            Event::Failed {
                explanation,
                by_host,
            } => {
                tracing::warn!(
                    subnqn = %c.subsys.nqn,
                    hostnqn = %c.hostnqn,
                    cntlid = c.cntlid,
                    qid = self.qid,
                    reason = failure::name(explanation),
                    code = explanation,
                    side = if by_host { "host refused the controller (AUTH_Failure2)" } else { "controller refused the host (AUTH_Failure1)" },
                    "authentication failed: closing the queue"
                );
                self.gate |= gate::UNAUTHENTICATED;
                self.auth_deadline = None;
                self.state = QueueState::Disconnecting;
                self.publish_queue_static();
            }
        }
    }
}
