//! Errors cross tower layers as [`BoxError`]; only the outermost rescue layer turns them into
//! status codes, and it classifies them by walking the cause chain.

use std::error::Error;

/// The error type every service below the rescue layer uses.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Returns true if `err` or any error in its `source()` chain is an `E`.
pub fn is_caused_by<E: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    cause_ref::<E>(err).is_some()
}

/// Returns the first error of type `E` in the cause chain of `err`, if any.
pub fn cause_ref<'a, E: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut cur: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[test]
    fn finds_nested_cause() {
        let e: BoxError = Box::new(Outer(Inner));
        assert!(is_caused_by::<Inner>(e.as_ref()));
        assert!(is_caused_by::<Outer>(e.as_ref()));
        assert!(!is_caused_by::<std::io::Error>(e.as_ref()));
    }
}
