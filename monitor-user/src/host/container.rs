//! Container attribution from a process's cgroup path.
//!
//! Pure string parsing: no I/O, no allocation beyond the returned strings.
//! The caller reads `/proc/<pid>/cgroup` (or already has a cgroup2 path) and
//! hands it to [`from_proc_cgroup`] or [`from_cgroup_path`].
//!
//! Recognised shapes (any prefix before them is allowed, including the
//! `/../..` that appears when the reader lives in its own cgroup namespace):
//!
//! | driver / runtime            | shape                                                                                  |
//! |-----------------------------|----------------------------------------------------------------------------------------|
//! | kubelet systemd driver      | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/…` |
//! | kubelet cgroupfs driver     | `/kubepods/<qos>/pod<uid-with-dashes>/…` (`/kubepods/pod<uid>/…` for guaranteed)       |
//! | containerd (systemd)        | `cri-containerd-<id>.scope`                                                            |
//! | containerd (cgroupsPath)    | `…/containerd.service/kubepods-…-pod<uid>.slice:cri-containerd:<id>`                   |
//! | CRI-O                       | `crio-<id>.scope`, `crio-<id>` (cgroupfs); `crio-conmon-<id>.scope` is conmon          |
//! | Docker                      | `docker-<id>.scope`, `/docker/<id>`                                                    |
//! | Podman                      | `libpod-<id>.scope`, `libpod-<id>`; `libpod-conmon-<id>.scope` is conmon               |
//! | nerdctl                     | `nerdctl-<id>.scope` (containerd)                                                      |
//! | any runtime, cgroupfs       | a bare `<id>` directory (runtime unknown unless the parent is `docker`)                |
//!
//! Outside containers and pods, the path names the systemd unit the process runs in: the
//! innermost `NAME.service` or `NAME.scope` (`/system.slice/redis-server.service`,
//! `/user.slice/user-1000.slice/user@1000.service/app.slice/NAME.service`,
//! `/user.slice/user-1000.slice/session-3.scope`); a user's systemd itself
//! (`user@1000.service/init.scope`) is its `user@1000.service`. A container's scope
//! (`docker-<id>.scope`) is a container, not a unit, and units inside a container are not
//! reported: the container already says where the process runs.
//!
//! Container ids must be exactly 64 lowercase hex characters; anything else is
//! not treated as an id. Pod UIDs are returned in the dashed UUID form; static
//! (file-based) pods, whose "UID" is the kubelet's 32-hex config hash, are
//! returned unchanged.

use serde::Serialize;

/// The container runtime that created the cgroup, as far as the path tells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    #[default]
    Unknown,
}

impl Runtime {
    /// Lowercase name, identical to the serde representation.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "crio",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

/// Kubernetes pod `QoS` class, derived from the kubepods hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// Lowercase name, identical to the serde representation.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "guaranteed",
            QosClass::Burstable => "burstable",
            QosClass::BestEffort => "besteffort",
        }
    }
}

/// What a cgroup path says about the container a process belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub runtime: Runtime,
    /// 64 lowercase hex characters, or `None`.
    pub container_id: Option<String>,
    /// Dashed UUID form (or the 32-hex config hash of a static pod).
    pub pod_uid: Option<String>,
    pub qos: Option<QosClass>,
    /// The process sits in a `crio-conmon-<id>.scope` / `libpod-conmon-<id>.scope`:
    /// it is the runtime's monitor process for container `<id>`, not part of
    /// the container. `container_id` is then `None` (its memory is not the
    /// container's), `runtime` and `pod_uid` are still filled in.
    pub conmon: bool,
    /// The systemd unit (`NAME.service`, `NAME.scope`), outside containers and pods.
    pub unit: Option<String>,
}

impl ContainerInfo {
    /// True when a container id was found.
    #[must_use]
    pub fn is_container(&self) -> bool {
        self.container_id.is_some()
    }
}

/// Attribute a single cgroup path (cgroup2 path, or the path field of one
/// `/proc/<pid>/cgroup` line).
#[must_use]
pub fn from_cgroup_path(path: &str) -> ContainerInfo {
    let mut info = ContainerInfo::default();
    let mut prev: Option<&str> = None;
    let mut unit: Option<&str> = None;

    for seg in path.trim().split('/').filter(|s| !s.is_empty()) {
        // systemd-style cgroupsPath taken literally by a runtime configured
        // for cgroupfs: "<parent>.slice:<prefix>:<name>".
        if let Some((parent, prefix, name)) = split_cgroups_path(seg) {
            if let Some((uid, qos)) = pod_from_systemd_slice(parent) {
                set_pod(&mut info, uid, qos);
            }
            if let Some(rt) = runtime_from_prefix(prefix)
                && is_container_id(name)
            {
                set_container(&mut info, rt, name);
            }
            prev = Some(seg);
            continue;
        }

        if let Some((uid, qos)) =
            pod_from_systemd_slice(seg).or_else(|| pod_from_cgroupfs_dir(seg, prev))
        {
            set_pod(&mut info, uid, qos);
        } else if let Some((rt, id, conmon)) = container_from_segment(seg, prev) {
            if conmon {
                info.runtime = rt;
                info.container_id = None;
                info.conmon = true;
            } else {
                set_container(&mut info, rt, id);
            }
        } else if is_unit_name(seg) {
            // The manager of a user's units sits in its own init.scope: the unit the system
            // knows it by is the user@UID.service above.
            let user_manager = seg == "init.scope"
                && prev.is_some_and(|p| p.starts_with("user@") && p.ends_with(".service"));
            if !user_manager {
                unit = Some(seg);
            }
        }
        prev = Some(seg);
    }
    if !info.is_container() && info.pod_uid.is_none() && !info.conmon {
        info.unit = unit.map(str::to_owned);
    }
    info
}

/// systemd's longest unit name (`UNIT_NAME_MAX` less its NUL).
const UNIT_NAME_MAX: usize = 255;

/// A service or scope name as systemd allows it: a non-empty prefix of ASCII letters, digits
/// and `:-_.\@`. A name is all a cgroup path offers, and a delegated subtree may be named by
/// its user, so anything else is not taken for a unit.
fn is_unit_name(seg: &str) -> bool {
    let Some(prefix) = seg
        .strip_suffix(".service")
        .or_else(|| seg.strip_suffix(".scope"))
    else {
        return false;
    };
    !prefix.is_empty()
        && seg.len() <= UNIT_NAME_MAX
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// Attribute a whole `/proc/<pid>/cgroup` file.
///
/// * Pure cgroup v2 (only a `0::/…` line): that line.
/// * v1 or hybrid (any line with a non-zero hierarchy id): the `memory`
///   controller line, else the `pids` line, else the `0::` line. When both
///   `memory` and `pids` name a container and they disagree, the answer is
///   [`ContainerInfo::default`] (unknown) rather than a guess.
pub fn from_proc_cgroup(contents: &str) -> ContainerInfo {
    let mut unified: Option<&str> = None;
    let mut memory: Option<&str> = None;
    let mut pids: Option<&str> = None;
    let mut saw_v1 = false;

    for line in contents.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hier == "0" && controllers.is_empty() {
            unified = Some(path);
            continue;
        }
        saw_v1 = true;
        for c in controllers.split(',') {
            match c {
                "memory" => memory = Some(path),
                "pids" => pids = Some(path),
                _ => {}
            }
        }
    }

    if !saw_v1 {
        return unified.map(from_cgroup_path).unwrap_or_default();
    }
    match (memory, pids) {
        (Some(m), Some(p)) => {
            let mi = from_cgroup_path(m);
            let pi = from_cgroup_path(p);
            let conflict = (mi.container_id.is_some()
                && pi.container_id.is_some()
                && mi.container_id != pi.container_id)
                || (mi.pod_uid.is_some() && pi.pod_uid.is_some() && mi.pod_uid != pi.pod_uid);
            if conflict {
                ContainerInfo::default()
            } else {
                mi
            }
        }
        (Some(m), None) => from_cgroup_path(m),
        (None, Some(p)) => from_cgroup_path(p),
        (None, None) => unified.map(from_cgroup_path).unwrap_or_default(),
    }
}

/// 64 lowercase hex characters.
#[must_use]
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn set_pod(info: &mut ContainerInfo, uid: String, qos: Option<QosClass>) {
    // A pod level below an earlier container (kind / nested Kubernetes):
    // the outer container does not describe this process.
    *info = ContainerInfo {
        pod_uid: Some(uid),
        qos,
        ..ContainerInfo::default()
    };
}

fn set_container(info: &mut ContainerInfo, rt: Runtime, id: &str) {
    info.runtime = rt;
    info.container_id = Some(id.to_owned());
    info.conmon = false;
}

/// "kubepods-burstable-pod0a1b_….slice:cri-containerd:<id>" -> three parts.
fn split_cgroups_path(seg: &str) -> Option<(&str, &str, &str)> {
    let mut it = seg.splitn(3, ':');
    let parent = it.next()?;
    let prefix = it.next()?;
    let name = it.next()?;
    (!name.contains(':')).then_some((parent, prefix, name))
}

fn runtime_from_prefix(prefix: &str) -> Option<Runtime> {
    match prefix {
        "cri-containerd" | "nerdctl" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        "libpod" => Some(Runtime::Podman),
        _ => None,
    }
}

/// `[kubelet-]kubepods[-burstable|-besteffort]-pod<uid>.slice`
fn pod_from_systemd_slice(seg: &str) -> Option<(String, Option<QosClass>)> {
    let name = seg.strip_suffix(".slice")?;
    let idx = name.rfind("-pod")?;
    let (head, uid) = (&name[..idx], &name[idx + 4..]);
    let qos = if head.ends_with("kubepods-burstable") {
        QosClass::Burstable
    } else if head.ends_with("kubepods-besteffort") {
        QosClass::BestEffort
    } else if head.ends_with("kubepods") {
        QosClass::Guaranteed
    } else {
        return None;
    };
    let uid = normalize_pod_uid(&uid.replace('_', "-"))?;
    Some((uid, Some(qos)))
}

/// `pod<uid>` directory of the cgroupfs driver; `QoS` from the parent directory.
fn pod_from_cgroupfs_dir(seg: &str, prev: Option<&str>) -> Option<(String, Option<QosClass>)> {
    let uid = normalize_pod_uid(seg.strip_prefix("pod")?)?;
    let qos = match prev {
        Some("burstable") => Some(QosClass::Burstable),
        Some("besteffort") => Some(QosClass::BestEffort),
        Some("kubepods") => Some(QosClass::Guaranteed),
        // e.g. "/../../pod<uid>" seen from inside a cgroup namespace.
        _ => None,
    };
    Some((uid, qos))
}

/// Dashed lowercase UUID, or a 32-hex static-pod config hash. Anything else
/// is rejected.
fn normalize_pod_uid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let dashed = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => is_lower_hex(c),
        });
    let hash = b.len() == 32 && b.iter().copied().all(is_lower_hex);
    (dashed || hash).then(|| s.to_owned())
}

/// `(prefix, runtime, conmon, allowed without ".scope")`, most specific first.
const PREFIXES: &[(&str, Runtime, bool, bool)] = &[
    ("cri-containerd-", Runtime::Containerd, false, false),
    ("crio-conmon-", Runtime::CriO, true, true),
    ("crio-", Runtime::CriO, false, true),
    ("docker-", Runtime::Docker, false, false),
    ("libpod-conmon-", Runtime::Podman, true, true),
    ("libpod-", Runtime::Podman, false, true),
    ("nerdctl-", Runtime::Containerd, false, false),
];

/// Returns `(runtime, id, is_conmon)`.
fn container_from_segment<'a>(
    seg: &'a str,
    prev: Option<&str>,
) -> Option<(Runtime, &'a str, bool)> {
    if is_container_id(seg) {
        let rt = if prev == Some("docker") {
            Runtime::Docker
        } else {
            Runtime::Unknown
        };
        return Some((rt, seg, false));
    }
    let (name, scope) = match seg.strip_suffix(".scope") {
        Some(n) => (n, true),
        None => (seg, false),
    };
    for &(prefix, rt, conmon, bare_ok) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            if is_container_id(id) && (scope || bare_ok) {
                return Some((rt, id, conmon));
            }
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c5d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678ab";
    const ID2: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
    const UID: &str = "1b3e5f7a-9c2d-4e6f-8a0b-c1d2e3f4a5b6";
    const UID_US: &str = "1b3e5f7a_9c2d_4e6f_8a0b_c1d2e3f4a5b6";

    fn expect(
        rt: Runtime,
        id: Option<&str>,
        uid: Option<&str>,
        qos: Option<QosClass>,
    ) -> ContainerInfo {
        ContainerInfo {
            runtime: rt,
            container_id: id.map(str::to_owned),
            pod_uid: uid.map(str::to_owned),
            qos,
            conmon: false,
            unit: None,
        }
    }

    /// What the path says about containers and pods, leaving out the systemd unit.
    fn container_part(path: &str) -> ContainerInfo {
        ContainerInfo {
            unit: None,
            ..from_cgroup_path(path)
        }
    }

    #[test]
    fn systemd_containerd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn systemd_containerd_besteffort() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
    }

    #[test]
    fn systemd_containerd_guaranteed() {
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope");
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::Guaranteed)
            )
        );
    }

    #[test]
    fn systemd_crio() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{ID}.scope"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::CriO,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn crio_container_subcgroup() {
        // CRI-O on cgroup v2 may put the workload in a "container" child.
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{ID}.scope/container"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::CriO,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-conmon-{ID}.scope"
        );
        let got = from_cgroup_path(&p);
        assert_eq!(got.runtime, Runtime::CriO);
        assert_eq!(got.container_id, None);
        assert_eq!(got.pod_uid.as_deref(), Some(UID));
        assert_eq!(got.qos, Some(QosClass::Burstable));
        assert!(got.conmon);
        assert!(!got.is_container());
    }

    #[test]
    fn systemd_docker_in_kubernetes() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/docker-{ID}.scope"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Docker,
                Some(ID),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
    }

    #[test]
    fn cgroupfs_burstable() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Unknown,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn cgroupfs_guaranteed() {
        let p = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Unknown,
                Some(ID),
                Some(UID),
                Some(QosClass::Guaranteed)
            )
        );
    }

    #[test]
    fn cgroupfs_besteffort() {
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Unknown,
                Some(ID),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
    }

    #[test]
    fn cgroupfs_crio() {
        let p = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::CriO,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn cgroupfs_static_pod_hash_uid() {
        let hash = "8e6c1b6a0d3ef4e1e54df1a4b5d8f1c3";
        let p = format!("/kubepods/burstable/pod{hash}/{ID}");
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Unknown,
                Some(ID),
                Some(hash),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn pod_level_without_container() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(Runtime::Unknown, None, Some(UID), Some(QosClass::Burstable))
        );
    }

    #[test]
    fn plain_docker_cgroupfs() {
        assert_eq!(
            from_cgroup_path(&format!("/docker/{ID}")),
            expect(Runtime::Docker, Some(ID), None, None)
        );
    }

    #[test]
    fn plain_docker_systemd() {
        assert_eq!(
            from_cgroup_path(&format!("/system.slice/docker-{ID}.scope")),
            expect(Runtime::Docker, Some(ID), None, None)
        );
    }

    #[test]
    fn docker_init_suffix() {
        assert_eq!(
            from_cgroup_path(&format!("/system.slice/docker-{ID}.scope/init")),
            expect(Runtime::Docker, Some(ID), None, None)
        );
        assert_eq!(
            from_cgroup_path(&format!("/docker/{ID}/init.scope")),
            expect(Runtime::Docker, Some(ID), None, None)
        );
    }

    #[test]
    fn podman_rootful_and_rootless() {
        assert_eq!(
            from_cgroup_path(&format!("/machine.slice/libpod-{ID}.scope")),
            expect(Runtime::Podman, Some(ID), None, None)
        );
        let rootless = format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        );
        assert_eq!(
            from_cgroup_path(&rootless),
            expect(Runtime::Podman, Some(ID), None, None)
        );
        // Podman pods: the pod slice is not a container nor a Kubernetes pod.
        let in_pod = format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope");
        assert_eq!(
            from_cgroup_path(&in_pod),
            expect(Runtime::Podman, Some(ID), None, None)
        );
    }

    #[test]
    fn podman_cgroupfs_and_conmon() {
        assert_eq!(
            from_cgroup_path(&format!("/libpod_parent/libpod-{ID}")),
            expect(Runtime::Podman, Some(ID), None, None)
        );
        let conmon = from_cgroup_path(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert_eq!(conmon.runtime, Runtime::Podman);
        assert_eq!(conmon.container_id, None);
        assert!(conmon.conmon);
    }

    #[test]
    fn containerd_cgroups_path_literal() {
        let p = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_US}.slice:cri-containerd:{ID}"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
        let g = format!(
            "/system.slice/containerd.service/kubepods-pod{UID_US}.slice:cri-containerd:{ID}"
        );
        assert_eq!(
            from_cgroup_path(&g),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::Guaranteed)
            )
        );
    }

    #[test]
    fn containerd_cgroups_path_bad_id() {
        let p = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_US}.slice:cri-containerd:nothex"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(Runtime::Unknown, None, Some(UID), Some(QosClass::Burstable))
        );
    }

    #[test]
    fn kind_nested_kubernetes_in_docker() {
        let p = format!(
            "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            from_cgroup_path(&p),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
        // Directly in the inner pod slice: the outer node container must not leak through.
        let pod_only = format!(
            "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_US}.slice"
        );
        assert_eq!(
            from_cgroup_path(&pod_only),
            expect(
                Runtime::Unknown,
                None,
                Some(UID),
                Some(QosClass::Guaranteed)
            )
        );
    }

    #[test]
    fn cgroup_namespace_root_and_relative() {
        assert_eq!(from_cgroup_path("/"), ContainerInfo::default());
        assert_eq!(from_cgroup_path(""), ContainerInfo::default());
        // Reader in its own cgroup namespace: sibling paths start with "..".
        let rel = format!("/../../kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope");
        assert_eq!(
            from_cgroup_path(&rel),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
        // cgroupfs, QoS level cut off by the namespace: QoS unknown, not guessed.
        let rel_fs = format!("/../../pod{UID}/{ID}");
        assert_eq!(
            from_cgroup_path(&rel_fs),
            expect(Runtime::Unknown, Some(ID), Some(UID), None)
        );
    }

    #[test]
    fn non_container_paths_name_their_systemd_unit() {
        for (p, unit) in [
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some("session-3.scope"),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope",
                Some("app-gnome-firefox-1234.scope"),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/celery-worker.service",
                Some("celery-worker.service"),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                Some("user@1000.service"),
            ),
            (
                "/system.slice/redis-server.service",
                Some("redis-server.service"),
            ),
            (
                "/system.slice/system-getty.slice/getty@tty1.service",
                Some("getty@tty1.service"),
            ),
            // A service that delegates its subtree (systemd's Delegate=yes) keeps its name.
            (
                "/system.slice/celery.service/workers/w1",
                Some("celery.service"),
            ),
            (
                "/system.slice/containerd.service",
                Some("containerd.service"),
            ),
            ("/system.slice/docker.service", Some("docker.service")),
            ("/init.scope", Some("init.scope")),
            // Seen from inside a cgroup namespace.
            ("/../../system.slice/cron.service", Some("cron.service")),
            ("/", None),
            ("/system.slice", None),
            ("/user.slice/user-1000.slice", None),
            ("/kubepods.slice", None),
            ("/kubepods.slice/kubepods-burstable.slice", None),
            ("/kubepods/burstable", None),
            // Not names systemd gives.
            ("/system.slice/.service", None),
            ("/system.slice/my app.service", None),
            ("/system.slice/app.service.d", None),
        ] {
            assert_eq!(container_part(p), ContainerInfo::default(), "{p}");
            assert_eq!(from_cgroup_path(p).unit.as_deref(), unit, "{p}");
        }
        let long = format!("/system.slice/{}.service", "a".repeat(UNIT_NAME_MAX));
        assert_eq!(from_cgroup_path(&long).unit, None);
    }

    #[test]
    fn containers_and_pods_are_not_units() {
        for p in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope/init"),
            // systemd running in a container: its units are the container's.
            format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service"),
            format!("/docker/{ID}/init.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            ),
            format!(
                "/system.slice/containerd.service/kubepods-burstable-pod{UID_US}.slice:cri-containerd:{ID}"
            ),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{UID_US}.slice"),
        ] {
            let info = from_cgroup_path(&p);
            assert!(
                info.is_container() || info.pod_uid.is_some() || info.conmon,
                "{p}"
            );
            assert_eq!(info.unit, None, "{p}");
        }
    }

    #[test]
    fn invalid_ids_are_not_ids() {
        let upper = ID.to_ascii_uppercase();
        let short = &ID[..12];
        let long = format!("{ID}0");
        for p in [
            format!("/system.slice/docker-{upper}.scope"),
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/docker-{long}.scope"),
            format!("/docker/{short}"),
            "/docker/buildkit".to_owned(),
            format!("/system.slice/docker-{ID}.service"),
            // cri-containerd/docker without ".scope" is not a shape any runtime produces.
            format!("/system.slice/docker-{ID}"),
        ] {
            // Some of these are still systemd units (a scope named like no container).
            assert_eq!(container_part(&p), ContainerInfo::default(), "{p}");
        }
    }

    #[test]
    fn invalid_pod_uids_are_rejected() {
        for p in [
            "/kubepods/burstable/podnot-a-uid/".to_owned(),
            format!("/kubepods/burstable/pod{}", UID.to_ascii_uppercase()),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                &UID_US[..20]
            ),
            // "-pod" in some unrelated slice is not a kubepods pod.
            format!("/system.slice/foo-pod{UID_US}.slice"),
        ] {
            assert_eq!(from_cgroup_path(&p).pod_uid, None, "{p}");
        }
    }

    #[test]
    fn proc_cgroup_v2() {
        let c = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(
            from_proc_cgroup(&c),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn proc_cgroup_v2_with_colons_in_path() {
        let c = format!(
            "0::/system.slice/containerd.service/kubepods-besteffort-pod{UID_US}.slice:cri-containerd:{ID}\n"
        );
        assert_eq!(
            from_proc_cgroup(&c),
            expect(
                Runtime::Containerd,
                Some(ID),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
    }

    #[test]
    fn proc_cgroup_v1_uses_memory_line() {
        // Hybrid host with cgroupfs driver: the unified (systemd) line names
        // the containerd service, the memory controller line names the container.
        let c = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/system.slice/containerd.service\n\
             0::/system.slice/containerd.service\n"
        );
        assert_eq!(
            from_proc_cgroup(&c),
            expect(
                Runtime::Unknown,
                Some(ID),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn proc_cgroup_v1_pids_fallback() {
        let c = format!("5:pids:/docker/{ID}\n3:cpu,cpuacct:/docker/{ID}\n");
        assert_eq!(
            from_proc_cgroup(&c),
            expect(Runtime::Docker, Some(ID), None, None)
        );
    }

    #[test]
    fn proc_cgroup_v1_conflict_is_unknown() {
        let c = format!("11:memory:/docker/{ID}\n12:pids:/docker/{ID2}\n");
        assert_eq!(from_proc_cgroup(&c), ContainerInfo::default());
    }

    #[test]
    fn proc_cgroup_namespace_root_and_garbage() {
        assert_eq!(from_proc_cgroup("0::/\n"), ContainerInfo::default());
        assert_eq!(from_proc_cgroup(""), ContainerInfo::default());
        assert_eq!(from_proc_cgroup("garbage\n"), ContainerInfo::default());
        assert_eq!(
            from_proc_cgroup("0::/system.slice/redis-server.service\n"),
            ContainerInfo {
                unit: Some("redis-server.service".into()),
                ..ContainerInfo::default()
            }
        );
    }

    #[test]
    fn serializes_lowercase() {
        let info = expect(
            Runtime::CriO,
            Some(ID),
            Some(UID),
            Some(QosClass::BestEffort),
        );
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["runtime"], "crio");
        assert_eq!(v["qos"], "besteffort");
        assert_eq!(v["container_id"], ID);
        assert_eq!(v["pod_uid"], UID);
        assert_eq!(
            serde_json::to_value(Runtime::Containerd).unwrap(),
            "containerd"
        );
        assert_eq!(serde_json::to_value(Runtime::Unknown).unwrap(), "unknown");
        for rt in [
            Runtime::Containerd,
            Runtime::CriO,
            Runtime::Docker,
            Runtime::Podman,
            Runtime::Unknown,
        ] {
            assert_eq!(serde_json::to_value(rt).unwrap(), rt.as_str());
        }
        for q in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            assert_eq!(serde_json::to_value(q).unwrap(), q.as_str());
        }
    }
}
