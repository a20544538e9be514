//! A TCP relay between an edge's leaf node and the hub that can be cut and restored.
//!
//! Cutting closes the listener and every relayed connection, so the leaf node sees its link
//! drop and its reconnects refused, as when a site loses its uplink; restoring listens again
//! on the same port and the leaf node reconnects by itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::Error;

#[derive(Debug)]
pub struct LinkProxy {
    listen: SocketAddr,
    target: SocketAddr,
    runtime: Handle,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    up: bool,
}

impl LinkProxy {
    /// Starts relaying `listen` → `target`.
    pub fn start(runtime: Handle, listen: SocketAddr, target: SocketAddr) -> Result<Self, Error> {
        let mut proxy = LinkProxy {
            listen,
            target,
            runtime,
            tasks: Arc::default(),
            up: false,
        };
        proxy.restore()?;
        Ok(proxy)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Drops the link: closes the listener and all relayed connections.
    pub fn cut(&mut self) {
        for task in self.tasks.lock().expect("link tasks").drain(..) {
            task.abort();
        }
        self.up = false;
    }

    /// Brings the link back. A no-op if it is up.
    pub fn restore(&mut self) -> Result<(), Error> {
        if self.up {
            return Ok(());
        }
        let std_listener = std::net::TcpListener::bind(self.listen)
            .map_err(|e| Error::io(format!("listen on {}", self.listen), e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set listener non-blocking", e))?;
        let target = self.target;
        let tasks = self.tasks.clone();
        let _guard = self.runtime.enter();
        let listener =
            TcpListener::from_std(std_listener).map_err(|e| Error::io("register listener", e))?;
        let accept = self.runtime.spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let relay = tokio::spawn(relay(inbound, target));
                tasks.lock().expect("link tasks").push(relay.abort_handle());
            }
        });
        self.tasks
            .lock()
            .expect("link tasks")
            .push(accept.abort_handle());
        self.up = true;
        Ok(())
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
