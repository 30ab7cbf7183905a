//! The accept loop of the hand-written fixtures: every connection served on
//! its own task, all of them stopped with the fixture.

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts on `listener` until `stop`, running `serve` for each connection
/// (cut short by `stop` too).
pub fn serve_connections<F, Fut>(listener: TcpListener, stop: CancellationToken, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            let (connection, token) = (serve(stream), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    () = connection => {}
                }
            });
        }
    });
}
