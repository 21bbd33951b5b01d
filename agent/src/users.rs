//! User lookup from the guest's /etc/passwd and /etc/group, parsed by hand:
//! the agent is linked statically, and glibc's getpwnam/getgrnam need NSS
//! modules that a static binary cannot load.

use std::path::Path;

/// Who an exec runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Login name, when /etc/passwd knows the uid.
    pub name: Option<String>,
    pub home: String,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
}

/// The `user` field of exec.start: a name or a uid.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum UserSpec {
    Id(u32),
    Name(String),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Groups whose member list names `user`.
fn groups_of(group_text: &str, user: &str) -> Vec<u32> {
    group_text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let gid: u32 = f[2].parse().ok()?;
            f[3].split(',').any(|m| m.trim() == user).then_some(gid)
        })
        .collect()
}

/// Resolves `spec` against `<root>/etc/passwd` and `<root>/etc/group`.
/// A numeric uid that passwd does not know runs with gid = uid, no
/// supplementary groups and HOME=/ (never gid 0: that would hand the root
/// group's file access to untrusted code). `None`: unknown user name.
pub fn lookup(spec: &UserSpec, root: &Path) -> Option<User> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    let entries = parse_passwd(&passwd);
    let found = match spec {
        UserSpec::Name(n) => entries.iter().find(|e| &e.name == n).or_else(|| {
            // A numeric string is a uid when no user has that name.
            let uid: u32 = n.parse().ok()?;
            entries.iter().find(|e| e.uid == uid)
        }),
        UserSpec::Id(uid) => entries.iter().find(|e| e.uid == *uid),
    };
    match found {
        Some(e) => {
            let mut groups = vec![e.gid];
            for g in groups_of(&group, &e.name) {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
            Some(User { uid: e.uid, gid: e.gid, name: Some(e.name.clone()), home: e.home.clone(), groups })
        }
        None => {
            let uid = match spec {
                UserSpec::Id(u) => *u,
                UserSpec::Name(n) => n.parse().ok()?,
            };
            Some(User { uid, gid: uid, name: None, home: "/".into(), groups: vec![uid] })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("krunbox-users-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\nalice:x:1000:\nwheel:x:10:root,alice\ndocker:x:999:bob, alice\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn lookups() {
        let root = fixture();
        let a = lookup(&UserSpec::Name("alice".into()), &root).unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(a.groups, vec![1000, 10, 999]);
        let r = lookup(&UserSpec::Id(0), &root).unwrap();
        assert_eq!(r.name.as_deref(), Some("root"));
        assert_eq!(r.groups, vec![0, 10]);
        let by_str = lookup(&UserSpec::Name("1000".into()), &root).unwrap();
        assert_eq!(by_str.name.as_deref(), Some("alice"));
        let anon = lookup(&UserSpec::Id(4242), &root).unwrap();
        assert_eq!((anon.uid, anon.gid, anon.name, anon.home.as_str()), (4242, 4242, None, "/"));
        assert!(lookup(&UserSpec::Name("nobody-here".into()), &root).is_none());
        std::fs::remove_dir_all(root).unwrap();
    }
}
