//! Real multi-hop networks on one machine: network namespaces made by the
//! test (`ip netns`), joined by veth pairs, with routes, MTUs and nftables
//! rules of its choosing. Routers forward with the kernel's own IP stack,
//! so TTLs, ICMP errors and MTUs behave as on real routers. Needs root.
//!
//! Every namespace of a [`Lab`] is named after it (`vt<pid>x<n>-<name>`),
//! so labs of tests that run at the same time never meet; the lab deletes
//! its namespaces (and with them their links) when dropped.

use std::future::Future;
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// A set of namespaces that belong to one test.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    links: u32,
}

/// One namespace of a [`Lab`]: a host or a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns(pub String);

impl Ns {
    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.0
    }
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// An empty lab. Fails, saying why, where namespaces cannot be made
    /// (not root, no `ip`).
    pub fn new() -> Result<Self> {
        if !std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        }) {
            bail!("network namespaces need root: run the tests as root (CI does)");
        }
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            prefix: format!("vt{}x{n}", std::process::id()),
            namespaces: Vec::new(),
            links: 0,
        })
    }

    /// A new namespace with its loopback up.
    pub fn host(&mut self, name: &str) -> Result<Ns> {
        let full = format!("{}-{name}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &full]))?;
        self.namespaces.push(full.clone());
        let ns = Ns(full);
        self.ip(&ns, &["link", "set", "lo", "up"])?;
        // No duplicate address detection: addresses are usable at once.
        self.sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0")?;
        self.sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    /// The lab's namespace made as `name`.
    pub fn namespace(&self, name: &str) -> Ns {
        Ns(format!("{}-{name}", self.prefix))
    }

    /// A namespace that forwards IPv4 and IPv6.
    pub fn router(&mut self, name: &str) -> Result<Ns> {
        let ns = self.host(name)?;
        self.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        self.sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")?;
        Ok(ns)
    }

    /// A veth pair between `a` and `b`, up, with the given addresses
    /// (CIDR, any number of each family) and MTU; returns the interface
    /// names (in `a`, in `b`).
    pub fn link(
        &mut self,
        a: &Ns,
        a_addrs: &[&str],
        b: &Ns,
        b_addrs: &[&str],
        mtu: Option<u32>,
    ) -> Result<(String, String)> {
        self.links += 1;
        let (ia, ib) = (format!("l{}a", self.links), format!("l{}b", self.links));
        run(Command::new("ip").args([
            "link", "add", &ia, "netns", &a.0, "type", "veth", "peer", "name", &ib, "netns", &b.0,
        ]))?;
        for (ns, iface, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", iface.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                self.ip(ns, &args)?;
            }
            if let Some(mtu) = mtu {
                self.ip(ns, &["link", "set", iface, "mtu", &mtu.to_string()])?;
            }
            self.ip(ns, &["link", "set", iface, "up"])?;
        }
        Ok((ia, ib))
    }

    /// An address on the namespace's loopback (a service address).
    pub fn address(&self, ns: &Ns, addr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", addr, "dev", "lo"];
        if addr.contains(':') {
            args.push("nodad");
        }
        self.ip(ns, &args)
    }

    /// A route in `ns`: `to` (CIDR or `default`) via `via`.
    pub fn route(&self, ns: &Ns, to: &str, via: &str) -> Result<()> {
        let family = if via.contains(':') { "-6" } else { "-4" };
        self.ip(ns, &[family, "route", "add", to, "via", via])
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, ns: &Ns, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&ns.0).args(args)).map(|_| ())
    }

    /// A sysctl of the namespace.
    pub fn sysctl(&self, ns: &Ns, key: &str, value: &str) -> Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]))
        .map(|_| ())
    }

    /// nftables commands (`nft -f -` input) in the namespace.
    pub fn nft(&self, ns: &Ns, ruleset: &str) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft (Debian package nftables)")?;
        child
            .stdin
            .take()
            .context("nft's stdin")?
            .write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {}: {}",
                ns.0,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// A command run in the namespace, to its end (stdout and stderr
    /// kept).
    pub fn exec(&self, ns: &Ns, program: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &ns.0, program])
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", ns.0))
    }

    /// A command prepared to run in the namespace (to spawn and keep).
    pub fn command(&self, ns: &Ns, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns.0, program]);
        command
    }

    /// Runs `future` to its end on a thread of its own that has entered
    /// `ns`: every socket it opens is the namespace's.
    pub fn run_in<F>(&self, ns: &Ns, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.in_namespace(ns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok::<_, anyhow::Error>(runtime.block_on(future))
        })?
    }
}

/// A real nginx running in a namespace of a [`Lab`]; killed when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: std::process::Child,
    /// Its prefix: config, logs, and `www/`, the document root.
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// The document root (`root` of the server), to put files in.
    pub fn www(&self) -> std::path::PathBuf {
        self.dir.path().join("www")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// Starts nginx in `ns`, listening on each of `listen` (`ip:port`,
    /// `[v6]:port`), with `server` as the body of its one `server` block
    /// (`root` is its `www/`); returns once every address accepts.
    pub fn nginx(&self, ns: &Ns, listen: &[&str], server: &str) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("vantage-nginx-")
            .tempdir()?;
        let p = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("www"))?;
        let listens: String = listen.iter().map(|l| format!("  listen {l};\n")).collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n sendfile on;\n client_body_temp_path {p}/body;\n\
             proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n\
             server {{\n{listens}  root {p}/www;\n{server}\n }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf)?;
        let child = self
            .command(ns, "nginx")
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .spawn()
            .context("running nginx (Debian package nginx)")?;
        let nginx = Nginx { child, dir };
        for addr in listen {
            let addr: std::net::SocketAddr = addr.parse().context("a listen address")?;
            if !self.wait_until_listening_in(ns, addr, std::time::Duration::from_secs(10))? {
                bail!(
                    "nginx did not listen on {addr}: {}",
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default()
                );
            }
        }
        Ok(nginx)
    }

    /// Waits until something in `ns` accepts TCP connections at `addr`
    /// ([`crate::wait_until_listening`], from inside `ns`).
    pub fn wait_until_listening_in(
        &self,
        ns: &Ns,
        addr: std::net::SocketAddr,
        within: std::time::Duration,
    ) -> Result<bool> {
        self.in_namespace(ns, move || crate::wait_until_listening(addr, within))
    }
}

/// A TCP relay from a namespace's loopback to the test's own (see
/// [`Lab::relay`]); stops when dropped.
#[derive(Debug)]
pub struct Relay {
    /// Where processes in the namespace connect (its 127.0.0.1).
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Lab {
    /// Lets processes in `ns` reach `to`, a server of the test on its own
    /// loopback (the collector), through `127.0.0.1:<port>` of `ns`: the
    /// listening socket is opened inside `ns`, the onward connection in
    /// the caller's namespace, and one task of the caller's runtime
    /// copies between them. No address outside loopback is used.
    pub fn relay(&self, ns: &Ns, to: std::net::SocketAddr) -> Result<Relay> {
        let listener = self.in_namespace(ns, || {
            let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })??;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Relay { addr, task })
    }

    /// Runs `f` on a thread of its own that has entered `ns`.
    pub fn in_namespace<T: Send + 'static>(
        &self,
        ns: &Ns,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/var/run/netns/{}", ns.0);
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {} panicked", ns.0))?
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Processes started in it by the test are the test's to stop;
            // the namespace goes when its last one does.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(command: &mut Command) -> Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
