//! Process signals as cancellation tokens.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT, and a second token cancelled on the
/// second signal (operators expect a second Ctrl-C to stop waiting for drain).
///
/// Must be called from within a tokio runtime.
///
/// # Errors
/// Fails if the signal handlers cannot be installed.
pub fn signals() -> std::io::Result<(CancellationToken, CancellationToken)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let first = CancellationToken::new();
    let second = CancellationToken::new();
    let (f, s) = (first.clone(), second.clone());
    tokio::spawn(async move {
        for token in [f, s] {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            token.cancel();
        }
    });
    Ok((first, second))
}
