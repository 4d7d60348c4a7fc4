//! The radio side of the gateway: a thread that owns the link sender and the radio.
//!
//! Records arrive on a channel; each is submitted to the [`LinkSender`] (bounded queue, every
//! drop logged and counted); frames go out as soon as the duty-cycle budget allows. On
//! [`ToRadio::Shutdown`] the thread keeps transmitting for a grace period, then counts what
//! is left as `dropped_at_shutdown`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lora_link::airtime::format_ms;
use lora_link::link::{LinkSender, Submit, TxPoll};
use lora_link::metrics::{Admit, LogThrottle};
use lora_link::radio::Radio;
use lora_link::records::Record;

use crate::{Counters, log};

/// Messages to the radio thread.
#[derive(Debug)]
pub enum ToRadio {
    /// A record to forward.
    Record(Record),
    /// Stop: transmit what the budget allows within the grace period, then return.
    Shutdown,
}

/// The radio thread's loop. Returns an error only for failures that make forwarding unsafe
/// (the counter lease cannot be persisted).
pub fn run<R: Radio + ?Sized>(
    sender: &mut LinkSender,
    radio: &mut R,
    rx: &Receiver<ToRadio>,
    counters: &Mutex<Counters>,
    grace: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    let mut throttle = crate::reject_throttle();
    let mut stopping: Option<Instant> = None;
    let mut wake: Option<Duration> = None;
    loop {
        // Wait for a record, the budget, or a stop request.
        let timeout = match wake {
            Some(t) => t.saturating_sub(start.elapsed()),
            None => Duration::from_millis(250),
        };
        let timeout = match stopping {
            Some(deadline) => timeout.min(deadline.saturating_duration_since(Instant::now())),
            None => timeout,
        };
        let first = match rx.recv_timeout(timeout) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(ToRadio::Shutdown),
        };
        for m in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match m {
                ToRadio::Record(r) => {
                    // A burst larger than the queue: first send what the budget allows, so
                    // the queue drops its oldest record only when the air cannot take it.
                    if sender.is_full() {
                        transmit(sender, radio, start, &mut wake, counters)?;
                    }
                    submit(sender, r, &mut throttle);
                }
                ToRadio::Shutdown => {
                    if stopping.is_none() {
                        log!(
                            "stopping: {} record(s) queued, up to {} s to send them",
                            sender.queued(),
                            grace.as_secs_f32()
                        );
                        stopping = Some(Instant::now() + grace);
                    }
                }
            }
        }
        transmit(sender, radio, start, &mut wake, counters)?;
        summary(&mut throttle, stopping.is_some());
        if let Some(deadline) = stopping
            && (sender.queued() == 0 || Instant::now() >= deadline)
        {
            let left = sender.queued() as u64;
            if left > 0 {
                log!("{left} record(s) not sent before shutdown: counted as dropped_at_shutdown");
            }
            summary(&mut throttle, true);
            update(counters, sender, start.elapsed(), |c| {
                c.dropped_at_shutdown += left;
                c.waiting = 0;
            });
            return Ok(());
        }
    }
}

/// Transmits every frame the budget allows now; `wake` becomes when the budget allows the
/// next one (None when the queue is empty).
fn transmit<R: Radio + ?Sized>(
    sender: &mut LinkSender,
    radio: &mut R,
    start: Instant,
    wake: &mut Option<Duration>,
    counters: &Mutex<Counters>,
) -> Result<(), String> {
    let mut radio_losses = 0u64;
    let mut radio_errors = 0u64;
    let outcome = loop {
        match sender.poll(start.elapsed()) {
            Ok(TxPoll::Send(f)) => match radio.transmit(&f.bytes) {
                Ok(()) => log!(
                    "sent frame #{}: {} record(s), {} bytes, {} on air",
                    f.counter,
                    f.records,
                    f.bytes.len(),
                    format_ms(f.time_on_air)
                ),
                Err(e) => {
                    radio_errors += 1;
                    radio_losses += f.records as u64;
                    log!(
                        "radio error, frame #{} with {} record(s) lost: {e}",
                        f.counter,
                        f.records
                    );
                }
            },
            Ok(TxPoll::WaitUntil(t)) => {
                if *wake != Some(t) {
                    log!(
                        "duty cycle: {} record(s) wait {} for the budget",
                        sender.queued(),
                        format_ms(t.saturating_sub(start.elapsed()))
                    );
                }
                *wake = Some(t);
                break Ok(());
            }
            Ok(TxPoll::Idle) => {
                *wake = None;
                break Ok(());
            }
            Err(e) => {
                break Err(format!(
                    "counter lease: {e}: stopping rather than risk reusing a frame counter"
                ));
            }
        }
    };
    update(counters, sender, start.elapsed(), |c| {
        c.radio_errors += radio_errors;
        c.dropped_radio_error += radio_losses;
    });
    outcome
}

/// Submits a record; every record refused or dropped is logged as it happens (topics come
/// from the broker: `log!` escapes them), within the rate limit of `throttle`.
fn submit(sender: &mut LinkSender, r: Record, throttle: &mut LogThrottle) {
    let topic = r.topic.clone();
    let outcome = sender.submit(r);
    let reason = match &outcome {
        Submit::Queued => return,
        Submit::QueuedDroppedOldest(_) => "queue_full",
        Submit::RejectedTooLarge { .. } => "too_large",
        Submit::RejectedInvalid(_) => "invalid",
    };
    if throttle.admit(reason, Instant::now()) == Admit::Suppress {
        return;
    }
    match outcome {
        Submit::Queued => {}
        Submit::QueuedDroppedOldest(old) => log!(
            "queue full: dropped the oldest record (topic {}) to queue one on {topic}",
            old.topic
        ),
        Submit::RejectedTooLarge { needs, max } => log!(
            "dropped a record on {topic}: it needs {needs} bytes, a frame carries {max} at this spreading factor"
        ),
        Submit::RejectedInvalid(e) => log!("dropped a record on {topic}: {e}"),
    }
}

/// Logs how many drop/refusal lines the rate limit held back, when a summary is due.
fn summary(throttle: &mut LogThrottle, force: bool) {
    if let Some(by_reason) = throttle.summary(Instant::now(), force) {
        let n: u64 = by_reason.values().sum();
        let detail: Vec<String> = by_reason.iter().map(|(r, k)| format!("{r} {k}")).collect();
        log!(
            "{n} more dropped or refused record(s) not logged one by one ({}); see the counters",
            detail.join(", ")
        );
    }
}

fn update(
    counters: &Mutex<Counters>,
    sender: &LinkSender,
    now: Duration,
    f: impl FnOnce(&mut Counters),
) {
    let mut c = counters.lock().unwrap_or_else(|p| p.into_inner());
    c.update_from(sender.stats(), sender.queued());
    let b = sender.budget();
    let used = b.usage(now.saturating_sub(lora_link::dutycycle::WINDOW), now);
    c.duty_cycle_left_us =
        u64::try_from(b.limit().saturating_sub(used).as_micros()).unwrap_or(u64::MAX);
    f(&mut c);
}

/// Starts [`run`] on its own thread; `stopped` is set when it returns (the bridge watches it),
/// and the result says whether it stopped cleanly.
pub fn spawn(
    mut sender: LinkSender,
    mut radio: Box<dyn Radio + Send>,
    rx: Receiver<ToRadio>,
    counters: Arc<Mutex<Counters>>,
    stopped: Arc<AtomicBool>,
    grace: Duration,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let r = run(&mut sender, &mut radio, &rx, &counters, grace);
        stopped.store(true, Ordering::SeqCst);
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_link::airtime::Modulation;
    use lora_link::crypto::LinkKeys;
    use lora_link::link::SenderConfig;
    use lora_link::radio::{RadioError, RxPacket};
    use lora_link::records::TopicTable;
    use lora_link::state::CounterLease;

    const TOPIC: &str = "maison/salon/temperature";

    /// Takes every frame at once and counts them.
    struct Instant0(u64);

    impl Radio for Instant0 {
        fn transmit(&mut self, _frame: &[u8]) -> Result<(), RadioError> {
            self.0 += 1;
            Ok(())
        }
        fn receive(&mut self, _timeout: Duration) -> Result<Option<RxPacket>, RadioError> {
            Ok(None)
        }
    }

    fn burst(duty_ppm: u32, records: usize) -> (Counters, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SenderConfig::new(
            10,
            1,
            Modulation::new(7, 125_000, 5).expect("SF7"),
            duty_ppm,
        );
        let lease = CounterLease::open(dir.path().join("tx.lease")).expect("lease");
        let table = TopicTable::new([(0, TOPIC)]);
        let mut sender = LinkSender::new(LinkKeys::derive(&[7; 16]), cfg, table, lease);
        let (tx, rx) = std::sync::mpsc::channel();
        // The whole burst is waiting before the radio thread looks at the channel.
        for i in 0..records {
            tx.send(ToRadio::Record(Record::new(TOPIC, format!("{i}"))))
                .expect("send");
        }
        tx.send(ToRadio::Shutdown).expect("send");
        let counters = Mutex::new(Counters {
            received: records as u64,
            ..Counters::default()
        });
        let mut radio = Instant0(0);
        run(&mut sender, &mut radio, &rx, &counters, Duration::ZERO).expect("run");
        let c = counters.into_inner().expect("counters");
        (c, radio.0)
    }

    #[test]
    fn a_burst_larger_than_the_queue_is_sent_whole_when_the_air_allows() {
        let (c, frames) = burst(1_000_000, 3000);
        assert_eq!((c.sent, c.dropped_queue_full), (3000, 0), "{c:?}");
        assert_eq!(c.frames_sent, frames);
        assert!(c.balanced(), "{c:?}");
    }

    #[test]
    fn when_the_budget_is_spent_the_oldest_records_go_and_are_counted() {
        // 0.1 %: 3.6 s of air per hour, about ten full frames
        let (c, _) = burst(1_000, 3000);
        assert!(c.dropped_queue_full > 0, "{c:?}");
        assert!(c.sent < 3000 && c.sent > 0, "{c:?}");
        assert!(c.balanced(), "{c:?}");
    }
}
