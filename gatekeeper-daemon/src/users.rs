//! The host's users and groups, read from `/etc/passwd` and `/etc/group` and nowhere else.
//!
//! glibc's lookups (`getpwuid`, `getpwnam`, `getgrouplist`) first ask a name service over a unix
//! socket (nscd's in `/var/run/nscd`, systemd's in `/run/systemd/userdb`), which a root agent can
//! make where none is: it would then say who a caller of the reviewers' socket is, and could
//! make each lookup wait for seconds. The files are below `/etc`, which agents cannot change
//! while it is among `[agents] host_paths` (the default).
//! Users known only to a directory service (LDAP, SSSD) have no name here: reviewers, owners and
//! `--user` must be local users.

use std::path::{Path, PathBuf};

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The name of the user with `uid` (the first line that has it, as glibc's files lookup does).
pub fn name_of(uid: u32) -> Option<String> {
    accounts(&read(PASSWD))
        .find(|account| account.uid == uid)
        .map(|account| account.name)
}

/// The account named `name`.
pub fn account(name: &str) -> Option<Account> {
    accounts(&read(PASSWD)).find(|account| account.name == name)
}

/// The groups of `name`: its primary group `gid` and every group that lists it as a member.
pub fn groups_of(name: &str, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    for (group, members) in group_members(&read(GROUP)) {
        if members.contains(&name) && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// A file's text, or none (a host without the file has no users to find in it).
fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The well-formed lines of a passwd file (`name:password:uid:gid:gecos:home:shell`); a line
/// that is not one is skipped, as glibc skips it.
fn accounts(text: &str) -> impl Iterator<Item = Account> + '_ {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, _] = fields.as_slice() else {
            return None;
        };
        if name.is_empty() || name.starts_with(['+', '-', '#']) {
            return None;
        }
        Some(Account {
            name: (*name).to_owned(),
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            home: PathBuf::from(home),
        })
    })
}

/// Each well-formed group line's gid and members (`name:password:gid:member,member`).
fn group_members(text: &str) -> impl Iterator<Item = (u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [_, _, gid, members] = fields.as_slice() else {
            return None;
        };
        let members = members.split(',').filter(|member| !member.is_empty());
        Some((gid.parse().ok()?, members.collect()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
        broken line\n\
        +nis\n\
        mallory:x:notanumber:1:::\n\
        bob:x:1001:1001::/home/bob:/bin/sh\n\
        alias:x:1000:1000::/:/bin/sh\n";

    #[test]
    fn accounts_are_the_well_formed_lines() {
        let names: Vec<String> = accounts(PASSWD_TEXT).map(|a| a.name).collect();
        assert_eq!(names, ["root", "alice", "bob", "alias"]);
        let alice = accounts(PASSWD_TEXT).find(|a| a.name == "alice").unwrap();
        assert_eq!(
            alice,
            Account {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into(),
            }
        );
    }

    #[test]
    fn a_uid_is_named_by_its_first_line() {
        let first = accounts(PASSWD_TEXT).find(|a| a.uid == 1000).unwrap();
        assert_eq!(first.name, "alice");
        assert!(accounts(PASSWD_TEXT).all(|a| a.uid != 4242));
        assert_eq!(accounts("").count(), 0);
    }

    #[test]
    fn groups_are_the_primary_and_those_listing_the_user() {
        let text = "adm:x:4:syslog,alice\nalice:x:1000:\nops:x:2000:bob,alice\nbad\nx:x:y:alice\n";
        let listing: Vec<u32> = group_members(text)
            .filter(|(_, members)| members.contains(&"alice"))
            .map(|(gid, _)| gid)
            .collect();
        assert_eq!(listing, [4, 2000]);
        assert!(group_members(text).all(|(_, members)| !members.contains(&"")));
    }
}
