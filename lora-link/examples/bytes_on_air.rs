//! Bytes and time on air of a 16-byte reading: this link's frame versus the JWT/AES-CBC/base64
//! scheme it replaces (~129 bytes), and readings per hour within a 1 % duty cycle, with and
//! without batching. Run: `cargo run -p lora-link --example bytes_on_air`.

use std::time::Duration;

use lora_link::airtime::{Modulation, format_ms, max_phy_payload};
use lora_link::frame::OVERHEAD;
use lora_link::records::OLD_SCHEME_BYTES_FOR_16;

fn per_hour(toa: Duration, readings_per_frame: usize) -> u64 {
    let budget = Duration::from_secs(36); // 1 % of an hour
    (budget.as_micros() / toa.as_micros().max(1)) as u64 * readings_per_frame as u64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let record = 1 + 1 + 16; // topic index, length, payload
    println!("sf  scheme            bytes  time on air    readings/h (1 %)");
    for sf in [7u8, 12] {
        let m = Modulation::new(sf, 125_000, 5)?;
        let ours = OVERHEAD + record;
        let old = m.time_on_air(OLD_SCHEME_BYTES_FOR_16);
        println!(
            "{sf:<3} JWT/AES-CBC       {OLD_SCHEME_BYTES_FOR_16:>5}  {:>12}  {:>8}",
            format_ms(old),
            per_hour(old, 1)
        );
        let t = m.time_on_air(ours);
        println!(
            "{sf:<3} lora-link         {ours:>5}  {:>12}  {:>8}",
            format_ms(t),
            per_hour(t, 1)
        );
        let n = (max_phy_payload(sf) - OVERHEAD) / record;
        let full = OVERHEAD + n * record;
        let tb = m.time_on_air(full);
        println!(
            "{sf:<3} lora-link x{n:<2}     {full:>5}  {:>12}  {:>8}  (batched, {n} readings per frame)",
            format_ms(tb),
            per_hour(tb, n)
        );
        println!(
            "{sf:<3} ratio old/ours: bytes {:.2}, time on air {:.2}",
            OLD_SCHEME_BYTES_FOR_16 as f64 / ours as f64,
            old.as_secs_f64() / t.as_secs_f64()
        );
    }
    Ok(())
}
