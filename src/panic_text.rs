//! The message inside a panic payload. Panics become errors in two places: a stage that panics
//! fails alone instead of taking the run down, and the CUDA runtime reports a missing driver
//! by panicking.

use std::any::Any;

/// The payload's message, when it is one (`panic!` with a literal gives `&str`, with
/// formatting a `String`).
pub fn panic_text(payload: &(dyn Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_formatted_and_other_payloads() {
        let literal = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_text(&*literal).as_deref(), Some("plain"));
        let n = 3;
        let formatted = std::panic::catch_unwind(|| panic!("n = {n}")).unwrap_err();
        assert_eq!(panic_text(&*formatted).as_deref(), Some("n = 3"));
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_text(&*other), None);
    }
}
