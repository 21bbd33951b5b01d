//! Interface configuration with the classic ioctls (no netlink needed):
//! link up, IPv4 address and netmask, default route.

use crate::sys::check;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn socket() -> io::Result<OwnedFd> {
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= r.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets IFF_UP on `iface`.
pub fn link_up(iface: &str) -> io::Result<()> {
    let s = socket()?;
    let mut r = ifreq(iface)?;
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) })?;
    unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &r) })?;
    Ok(())
}

/// Parses `a.b.c.d/prefix` into (address, netmask).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let (a, p) = s.split_once('/').unwrap_or((s, "24"));
    let ip: Ipv4Addr = a.parse().ok()?;
    let prefix: u32 = p.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Some((ip, Ipv4Addr::from(mask)))
}

/// Configures `iface` with `cidr`, brings it up and adds the default route.
pub fn configure(iface: &str, cidr: &str, gateway: Option<&str>) -> io::Result<()> {
    let (ip, mask) =
        parse_cidr(cidr).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {cidr}")))?;
    let s = socket()?;
    let mut r = ifreq(iface)?;
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFADDR, &r) })?;
    let mut r = ifreq(iface)?;
    r.ifr_ifru.ifru_netmask = sockaddr(mask);
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFNETMASK, &r) })?;
    link_up(iface)?;
    if let Some(gw) = gateway {
        let gw: Ipv4Addr =
            gw.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad gateway {gw}")))?;
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCADDRT, &rt) };
        if r < 0 && crate::errno::last() != libc::EEXIST {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cidr() {
        assert_eq!(
            super::parse_cidr("10.0.2.15/24"),
            Some(("10.0.2.15".parse().unwrap(), "255.255.255.0".parse().unwrap()))
        );
        assert_eq!(super::parse_cidr("10.0.0.1/0").unwrap().1, std::net::Ipv4Addr::UNSPECIFIED);
        assert_eq!(super::parse_cidr("10.0.0.1/33"), None);
    }
}
