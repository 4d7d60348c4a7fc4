//! The radio side of the gateway: a thread that owns the link sender and the radio.
//!
//! Records arrive on a channel; each is submitted to the [`LinkSender`] (bounded queue, every
//! drop logged and counted); frames go out as soon as the duty-cycle budget allows. On
//! [`ToRadio::Shutdown`] the thread keeps transmitting for a grace period, then counts what
//! is left as `dropped_at_shutdown`.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lora_link::airtime::format_ms;
use lora_link::link::{LinkSender, Submit, TxPoll};
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
                ToRadio::Record(r) => submit(sender, r),
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
        // Transmit everything the budget allows now.
        let mut radio_losses = 0u64;
        let mut radio_errors = 0u64;
        loop {
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
                    if wake != Some(t) {
                        log!(
                            "duty cycle: {} record(s) wait {} for the budget",
                            sender.queued(),
                            format_ms(t.saturating_sub(start.elapsed()))
                        );
                    }
                    wake = Some(t);
                    break;
                }
                Ok(TxPoll::Idle) => {
                    wake = None;
                    break;
                }
                Err(e) => {
                    update(counters, sender, |c| {
                        c.radio_errors += radio_errors;
                        c.dropped_radio_error += radio_losses;
                    });
                    return Err(format!(
                        "counter lease: {e}: stopping rather than risk reusing a frame counter"
                    ));
                }
            }
        }
        update(counters, sender, |c| {
            c.radio_errors += radio_errors;
            c.dropped_radio_error += radio_losses;
        });
        if let Some(deadline) = stopping
            && (sender.queued() == 0 || Instant::now() >= deadline)
        {
            let left = sender.queued() as u64;
            if left > 0 {
                log!("{left} record(s) not sent before shutdown: counted as dropped_at_shutdown");
            }
            update(counters, sender, |c| {
                c.dropped_at_shutdown += left;
                c.waiting = 0;
            });
            return Ok(());
        }
    }
}

fn submit(sender: &mut LinkSender, r: Record) {
    let topic = r.topic.clone();
    match sender.submit(r) {
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

fn update(counters: &Mutex<Counters>, sender: &LinkSender, f: impl FnOnce(&mut Counters)) {
    let mut c = counters.lock().unwrap_or_else(|p| p.into_inner());
    c.update_from(sender.stats(), sender.queued());
    f(&mut c);
}

/// Starts [`run`] on its own thread; the result says whether it stopped cleanly.
pub fn spawn(
    mut sender: LinkSender,
    mut radio: Box<dyn Radio + Send>,
    rx: Receiver<ToRadio>,
    counters: Arc<Mutex<Counters>>,
    grace: Duration,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || run(&mut sender, &mut radio, &rx, &counters, grace))
}
