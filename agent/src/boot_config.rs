//! The boot config of init mode (PROTOCOL.md, "Boot config").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the config is read from, in order.
pub const ENV_VAR: &str = "KRUNBOX_BOOT_JSON";
pub const FILE: &str = "/krunbox/boot.json";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct BootConfig {
    pub hostname: Option<String>,
    pub modules: Vec<String>,
    pub root: Root,
    pub mounts: Vec<Mount>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub transport: Transport,
    pub network: Option<Network>,
    pub rlimits: Rlimits,
    /// A base config (the one in the shared qemu initramfs): load `modules`,
    /// open `transport`, and ask the host for this boot's config with the
    /// `boot.config` request (PROTOCOL.md, "Boot config").
    #[serde(rename = "fromHost", skip_serializing_if = "std::ops::Not::not")]
    pub from_host: bool,
    /// netd's per-sandbox CA (a sandbox with secrets): installed into the
    /// guest's trust store (`trust.rs`).
    #[serde(rename = "caPem", skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Disk {
    pub serial: String,
    #[serde(default = "default_fstype")]
    pub fstype: String,
}

fn default_fstype() -> String {
    "ext4".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Root {
    Overlay {
        lower: Disk,
        upper: Disk,
    },
    /// A virtiofs share as the root; with `upper`, the share is mounted
    /// read-only as the lower layer of an overlay whose writes go to that disk
    /// (a directory root several sandboxes use).
    Virtiofs {
        tag: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upper: Option<Disk>,
    },
    Block {
        serial: String,
        #[serde(default = "default_fstype")]
        fstype: String,
    },
    #[default]
    Initramfs,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Mount {
    Virtiofs {
        tag: String,
        target: String,
        #[serde(default)]
        readonly: bool,
    },
    Tmpfs {
        target: String,
        #[serde(rename = "sizeMib")]
        size_mib: Option<u64>,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind")]
pub enum Transport {
    #[serde(rename = "virtio-port")]
    VirtioPort { name: String },
    #[serde(rename = "vsock")]
    Vsock { port: u32 },
    /// The agent connects out to the host (CID 2) on `port`; libkrun maps
    /// guest-initiated connections to a unix socket the runner listens on,
    /// which avoids the stall of a first host-to-guest vsock connection
    /// (libkrun issue 684).
    #[serde(rename = "vsock-connect")]
    VsockConnect { port: u32 },
}

impl Default for Transport {
    fn default() -> Self {
        Transport::VirtioPort { name: "agent".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Network {
    pub iface: String,
    /// `a.b.c.d/prefix`
    pub address: String,
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Rlimits {
    pub nofile: Option<u64>,
}

pub fn parse(text: &str) -> Result<BootConfig, String> {
    serde_json::from_str(text).map_err(|e| format!("bad boot config: {e}"))
}

/// Reads the config: `KRUNBOX_BOOT_JSON`, else the file at `file`, else the
/// defaults (initramfs root, virtio port "agent"). Returns where it came from.
pub fn load(file: &str) -> Result<(BootConfig, String), String> {
    if let Ok(text) = std::env::var(ENV_VAR) {
        return parse(&text).map(|c| (c, format!("${ENV_VAR}")));
    }
    match std::fs::read_to_string(file) {
        Ok(text) => parse(&text).map(|c| (c, file.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((BootConfig::default(), "defaults".into())),
        Err(e) => Err(format!("cannot read {file}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocol_example() {
        let c = parse(
            r#"{"hostname":"sb-1","modules":["/lib/modules/virtio_console.ko"],
            "root":{"kind":"overlay","lower":{"serial":"lower","fstype":"erofs"},"upper":{"serial":"upper","fstype":"ext4"}},
            "mounts":[{"kind":"virtiofs","tag":"v0","target":"/data","readonly":false},{"kind":"tmpfs","target":"/scratch","sizeMib":64}],
            "env":{"PATH":"/bin"},"workdir":"/","transport":{"kind":"vsock","port":1024},
            "network":{"iface":"eth0","address":"10.0.2.15/24","gateway":"10.0.2.2","dns":["10.0.2.3"]},
            "rlimits":{"nofile":1048576},"future":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("sb-1"));
        assert!(matches!(c.root, Root::Overlay { ref lower, .. } if lower.fstype == "erofs"));
        assert_eq!(c.mounts[1], Mount::Tmpfs { target: "/scratch".into(), size_mib: Some(64) });
        assert_eq!(c.transport, Transport::Vsock { port: 1024 });
        assert_eq!(c.rlimits.nofile, Some(1048576));
        assert_eq!(c.network.unwrap().dns, vec!["10.0.2.3"]);
        assert_eq!(c.ca_pem, None);
        let c = parse(r#"{"caPem":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}"#).unwrap();
        assert!(c.ca_pem.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn other_roots_and_defaults() {
        let c = parse(r#"{"root":{"kind":"virtiofs","tag":"root"},"network":null}"#).unwrap();
        assert_eq!(c.root, Root::Virtiofs { tag: "root".into(), upper: None });
        let c = parse(r#"{"root":{"kind":"virtiofs","tag":"root","upper":{"serial":"upper"}}}"#).unwrap();
        let upper = Some(Disk { serial: "upper".into(), fstype: "ext4".into() });
        assert_eq!(c.root, Root::Virtiofs { tag: "root".into(), upper });
        assert_eq!(c.transport, Transport::VirtioPort { name: "agent".into() });
        let c = parse(r#"{"root":{"kind":"block","serial":"root","fstype":"ext4"},"transport":{"kind":"virtio-port","name":"x"}}"#).unwrap();
        assert_eq!(c.root, Root::Block { serial: "root".into(), fstype: "ext4".into() });
        assert_eq!(parse("{}").unwrap().root, Root::Initramfs);
        assert!(!parse("{}").unwrap().from_host);
        let base = parse(r#"{"fromHost":true,"modules":["/lib/modules/virtio_console.ko"]}"#).unwrap();
        assert!(base.from_host && base.modules.len() == 1);
        assert!(parse(r#"{"root":{"kind":"nfs"}}"#).is_err());
    }
}
