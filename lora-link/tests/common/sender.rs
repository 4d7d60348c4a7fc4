//! A gateway's sending half on the emulated air: a [`LinkSender`] (what `gateway` runs) whose
//! frames are put on a hub one at a time. Also used by provisioner/tests/topology.rs (through
//! `#[path]`), which builds its senders from the manifests the provisioner emits.

use std::time::Duration;

use lora_link::air::{AirFrame, AirMsg, AirPort, HubHandle};
use lora_link::link::{LinkSender, Submit, TxPoll};
use lora_link::records::Record;

pub struct AirSender {
    pub tx: LinkSender,
    port: AirPort,
    /// The sender's clock (its duty-cycle budget counts in it).
    now: Duration,
    /// How far the clock moves per frame: its time on air when `None`.
    step: Option<Duration>,
}

impl AirSender {
    pub fn new(tx: LinkSender, hub: &HubHandle, now: Duration, step: Option<Duration>) -> Self {
        AirSender {
            tx,
            port: AirPort::connect(hub.addr).expect("port"),
            now,
            step,
        }
    }

    /// Seals one record and puts it on the air, then waits out its time on air (the hub
    /// honours it: one frame on the air at a time).
    pub fn send(&mut self, topic: &str, payload: &str) {
        assert_eq!(self.tx.submit(Record::new(topic, payload)), Submit::Queued);
        match self.tx.poll(self.now).expect("poll") {
            TxPoll::Send(f) => {
                self.port
                    .send(&AirMsg::Inject(AirFrame::new(f.bytes)))
                    .expect("inject");
                self.now += self.step.unwrap_or(f.time_on_air);
                std::thread::sleep(f.time_on_air + Duration::from_millis(40));
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}
