//! This user's nodes on this host, as processes of the same user find them: the token file
//! `ferry start` leaves for each port, the link to each node's Unix socket, and whether an
//! address is this host's at all. Errors are messages for the user: what is wrong and what
//! to do.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

fn dirs_error(e: std::io::Error) -> String {
    format!("ferry's directories: {e}")
}

/// Where `ferry start` leaves the token of the node listening on `port`, for drivers of the
/// same user on that host that join without `Config::token` or `FERRY_TOKEN`: in this
/// user's private runtime directory, readable by this user only.
pub fn token_file(port: u16) -> Result<PathBuf, String> {
    Ok(crate::runtime_dir().map_err(dirs_error)?.join(format!("cluster-{port}.token")))
}

/// The token to reach the node at `address`: `given`, or the token file `ferry start` wrote
/// on the node's host (read only if it is this user's and private).
pub fn cluster_token(address: &str, given: Option<&str>) -> Result<String, String> {
    if let Some(t) = given {
        return Ok(t.to_string());
    }
    let port = address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| format!("{address:?} is not an address: use HOST:PORT, as `ferry start` printed it"))?;
    if !is_local_address(address) {
        // This host's token files are for this host's nodes only: another host's node on the
        // same port is another cluster.
        return Err(format!(
            "no cluster token for {address}: give the token its `ferry start` printed (Config::token, FERRY_TOKEN, \
             or --token-file)"
        ));
    }
    let file = token_file(port)?;
    crate::read_secret(&file).map(|t| t.trim().to_string()).map_err(|e| {
        format!(
            "no cluster token for {address}: give the token `ferry start` printed (Config::token, FERRY_TOKEN, \
             or --token-file), or run as the same user on the node's host, where it is in {}: {e}",
            file.display()
        )
    })
}

/// The name of the link to the Unix socket of this user's node at `sa` on this host.
fn link_name(sa: SocketAddr) -> String {
    format!("node-{}.sock", SocketAddr::new(sa.ip().to_canonical(), sa.port()))
}

/// Where `ferry start` links the Unix socket of the node listening at `addr` on this host, for
/// processes of the same user there (see [`local_socket`]): under the address itself, and, for
/// a node on every address or on loopback, under `127.0.0.1` and `::1` too (what `localhost`
/// resolves to).
pub fn local_socket_links(addr: SocketAddr) -> Result<Vec<PathBuf>, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let dir = crate::runtime_dir().map_err(dirs_error)?;
    let mut names = vec![link_name(addr)];
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            names.push(link_name(SocketAddr::new(ip, addr.port())));
        }
    }
    names.sort();
    names.dedup();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The Unix socket of this user's node at `address` if it runs on this host: processes that
/// can reach it so do, rather than over TCP (faster, and out of reach of strangers, who can
/// reach the TCP port but not the socket's private directory). `Ok(None)`: no node of this
/// user's was started there (TCP, then). An error when one was and is gone: the port may be
/// someone else's by now, so nothing is sent there in its place.
pub fn local_socket(address: &str) -> Result<Option<PathBuf>, String> {
    let Some(sa) = address.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return Ok(None) };
    if !is_local(sa) {
        return Ok(None);
    }
    let link = crate::runtime_dir().map_err(dirs_error)?.join(link_name(sa));
    if std::fs::symlink_metadata(&link).is_err() {
        return Ok(None);
    }
    if std::os::unix::net::UnixStream::connect(&link).is_ok() {
        return Ok(Some(link));
    }
    Err(format!(
        "your node at {address} is not running any more (its socket, linked at {link}, is dead): start it again \
         with `ferry start`, or check the address; nothing was sent to whatever may listen on that port now \
         (remove {link} to reach it over TCP anyway)",
        link = link.display()
    ))
}

/// Whether `sa` is an address of this host: of this network namespace, which namespace hosts
/// do not share though they share a filesystem (one a socket can be bound to here).
fn is_local(sa: SocketAddr) -> bool {
    std::net::UdpSocket::bind((sa.ip(), 0)).is_ok()
}

/// [`is_local`] for `host:port`.
fn is_local_address(address: &str) -> bool {
    address.to_socket_addrs().ok().and_then(|mut a| a.next()).is_some_and(is_local)
}

/// Checks that something listens at `address` (`host:port`) before anything else is said
/// about joining it (a missing token is beside the point when no node runs there).
pub fn probe(address: &str) -> Result<(), String> {
    let bad = || format!("{address:?} is not an address: use HOST:PORT (e.g. 127.0.0.1:6380)");
    let (_, port) = address.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let addrs: Vec<_> = address.to_socket_addrs().map_err(|e| format!("cannot resolve {address}: {e}"))?.collect();
    let mut last = None;
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "nothing is listening at {address} ({}); start a cluster there with `ferry start --head`, or check the \
         address `ferry start` printed",
        last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
    ))
}

/// This host's address on the route to `address` (no packet is sent: connecting a UDP
/// socket only picks the route).
pub fn local_ip_toward(address: &str) -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(address).ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}
