//! Opening a USB-serial port with errors that say what to do.

use std::time::Duration;

use serialport::SerialPort;

use super::LinkError;

/// Opens `path` at `baud` 8N1, exclusively.
pub fn open(path: &str, baud: u32) -> Result<Box<dyn SerialPort>, LinkError> {
    let meta = std::fs::metadata(path);
    if let Err(e) = &meta
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Err(LinkError::Open(format!(
            "{path}: no such serial port. Is the board plugged in?{}",
            available()
        )));
    }
    let port = serialport::new(path, baud)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::One)
        .flow_control(serialport::FlowControl::None)
        .timeout(Duration::from_millis(50))
        .open();
    match port {
        Ok(p) => {
            let _ = p.clear(serialport::ClearBuffer::All);
            Ok(p)
        }
        Err(e) => Err(LinkError::Open(explain(path, &e))),
    }
}

fn available() -> String {
    match serialport::available_ports() {
        Ok(ports) if !ports.is_empty() => {
            let names: Vec<String> = ports.into_iter().map(|p| p.port_name).collect();
            format!(" Ports present: {}", names.join(", "))
        }
        _ => " No serial ports are present (check the cable: some are charge-only).".into(),
    }
}

fn explain(path: &str, e: &serialport::Error) -> String {
    let text = e.to_string();
    let os = match e.kind() {
        serialport::ErrorKind::Io(kind) => Some(kind),
        _ => None,
    };
    if os == Some(std::io::ErrorKind::PermissionDenied) || text.contains("Permission denied") {
        return format!(
            "{path}: permission denied. Add yourself to the group that owns it: `sudo usermod -aG dialout $USER`, then log out and in again ({text})"
        );
    }
    if text.contains("busy") || text.contains("os error 16") {
        return format!(
            "{path}: the port is busy: another program holds it (minicom, screen, a serial monitor, ModemManager, another provisioner). Close it and retry. On Ubuntu, brltty grabs CH340/CP210x adapters: `sudo apt remove brltty` ({text})"
        );
    }
    if matches!(e.kind(), serialport::ErrorKind::NoDevice) {
        return format!(
            "{path}: the device is gone or is not a serial port ({text}).{}",
            available()
        );
    }
    format!("{path}: cannot open: {text}")
}
