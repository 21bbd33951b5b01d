//! The sandbox CA (boot config `caPem`, from netd): a sandbox with secrets
//! has its TLS intercepted by netd, so the guest must trust netd's per-sandbox
//! CA. The agent appends it to the system trust store where one exists,
//! writes it to files of its own, and points the usual variables at them for
//! every exec.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

/// The distribution bundle the CA is appended to, when it exists.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The agent's directory (on the guest's /run tmpfs).
pub const DIR: &str = "/run/krunbox";
/// The CA alone (`NODE_EXTRA_CA_CERTS` adds to Node's own roots).
pub const CA_FILE: &str = "/run/krunbox/ca.pem";
/// The system bundle (when there is one) plus the CA: the variables that
/// replace a client's roots point here, so hosts that are not intercepted
/// (tls.bypass) still verify.
pub const BUNDLE_FILE: &str = "/run/krunbox/ca-bundle.pem";

/// The exec environment entries for the installed CA.
pub fn env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("SSL_CERT_FILE".to_string(), BUNDLE_FILE.to_string()),
        ("REQUESTS_CA_BUNDLE".to_string(), BUNDLE_FILE.to_string()),
        ("CURL_CA_BUNDLE".to_string(), BUNDLE_FILE.to_string()),
        ("NODE_EXTRA_CA_CERTS".to_string(), CA_FILE.to_string()),
    ])
}

/// Checks the shape of a PEM certificate (what netd sent, through the runner).
pub fn is_pem_certificate(pem: &str) -> bool {
    let t = pem.trim();
    t.starts_with("-----BEGIN CERTIFICATE-----") && t.ends_with("-----END CERTIFICATE-----") && !t.contains('\0')
}

fn with_newline(pem: &str) -> String {
    let mut s = pem.trim().to_string();
    s.push('\n');
    s
}

/// Installs `pem` under `root` ("/" in a VM): the agent's files, and, with
/// `system`, the system bundle when it exists (once: a second boot of the
/// same root does not append twice). `system` is false for a root that is
/// the host's own directory shared writable: the agent does not edit a
/// host file. Returns the errors it met (each step goes on).
pub fn install(root: &Path, pem: &str, system: bool) -> Vec<String> {
    let mut errors = Vec::new();
    if !is_pem_certificate(pem) {
        return vec!["caPem is not a PEM certificate".into()];
    }
    let pem = with_newline(pem);
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let system_text = std::fs::read_to_string(at(SYSTEM_BUNDLE)).ok();
    let mut bundle = system_text.clone().unwrap_or_default();
    if !bundle.contains(pem.trim()) {
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&pem);
    }
    let write = |p: &str, text: &str| -> io::Result<()> {
        std::fs::create_dir_all(at(DIR))?;
        std::fs::write(at(p), text)
    };
    for (p, text) in [(CA_FILE, pem.as_str()), (BUNDLE_FILE, bundle.as_str())] {
        if let Err(e) = write(p, text) {
            errors.push(format!("{p}: {e}"));
        }
    }
    if let (Some(sys), true) = (system_text, system) {
        if !sys.contains(pem.trim()) {
            let appended = std::fs::OpenOptions::new().append(true).open(at(SYSTEM_BUNDLE)).and_then(|mut f| {
                let sep = if sys.is_empty() || sys.ends_with('\n') { "" } else { "\n" };
                f.write_all(format!("{sep}{pem}").as_bytes())
            });
            if let Err(e) = appended {
                errors.push(format!("{SYSTEM_BUNDLE}: {e}"));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    #[test]
    fn appends_once_and_writes_its_own_files() {
        let dir = std::env::temp_dir().join(format!("trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc/ssl/certs")).unwrap();
        std::fs::write(dir.join("etc/ssl/certs/ca-certificates.crt"), "SYSTEM ROOTS").unwrap();
        assert!(install(&dir, PEM, false).is_empty());
        let sys = std::fs::read_to_string(dir.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(sys, "SYSTEM ROOTS", "a host directory root is not edited");
        for _ in 0..2 {
            assert!(install(&dir, PEM, true).is_empty());
        }
        let sys = std::fs::read_to_string(dir.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(sys, format!("SYSTEM ROOTS\n{PEM}\n"));
        assert_eq!(std::fs::read_to_string(dir.join("run/krunbox/ca.pem")).unwrap(), format!("{PEM}\n"));
        assert_eq!(std::fs::read_to_string(dir.join("run/krunbox/ca-bundle.pem")).unwrap(), sys);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_system_bundle_only_its_own_files() {
        let dir = std::env::temp_dir().join(format!("trust-none-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(install(&dir, PEM, true).is_empty());
        assert!(!dir.join("etc/ssl/certs/ca-certificates.crt").exists());
        assert_eq!(std::fs::read_to_string(dir.join("run/krunbox/ca-bundle.pem")).unwrap(), format!("{PEM}\n"));
        assert!(!install(&dir, "not a certificate", true).is_empty());
        assert_eq!(env()["SSL_CERT_FILE"], BUNDLE_FILE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
