//! `meta.properties`: which cluster and which node a data directory belongs to, written once
//! beside the data as Kafka writes it (`version=1`, `cluster.id`, `node.id`, `directory.id`).
//!
//! A node started on another node's directory, or on a directory of another cluster, refuses to
//! start: serving it would hand out that node's partitions and offsets under the wrong identity.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

pub const META_PROPERTIES_FILE: &str = "meta.properties";

/// What `meta.properties` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaProperties {
    pub cluster_id: String,
    pub node_id: i32,
    pub directory_id: String,
}

/// Why a data directory cannot be used by this node.
#[derive(Debug, thiserror::Error)]
pub enum MetaPropertiesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {problem}; if this is not a Caudal data directory, use another one")]
    Malformed { path: PathBuf, problem: String },
    #[error(
        "{path}: this directory belongs to node {found}, not node {configured}; start with \
         --node-id {found} or use another data directory"
    )]
    OtherNode {
        path: PathBuf,
        found: i32,
        configured: i32,
    },
    #[error(
        "{path}: this directory belongs to cluster {found}, but its topics are of cluster \
         {expected}; the directory mixes two clusters' files and is not used"
    )]
    OtherCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

impl MetaProperties {
    /// Reads `meta.properties` in `dir`; `Ok(None)` if there is none yet.
    pub fn read(dir: &Path) -> Result<Option<MetaProperties>, MetaPropertiesError> {
        let path = dir.join(META_PROPERTIES_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(MetaPropertiesError::Io { path, source }),
        };
        let malformed = |problem: String| MetaPropertiesError::Malformed {
            path: path.clone(),
            problem,
        };
        let mut keys = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(malformed(format!("line {line:?} is not key=value")));
            };
            keys.insert(key.trim(), value.trim());
        }
        match keys.get("version") {
            Some(&"1") => {}
            Some(v) => {
                return Err(malformed(format!(
                    "version {v} is not one Caudal writes (1)"
                )))
            }
            None => return Err(malformed("no version".to_string())),
        }
        let field = |key: &str| {
            keys.get(key)
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| malformed(format!("no {key}")))
        };
        let node_id = field("node.id")?;
        let node_id = node_id
            .parse()
            .map_err(|_| malformed(format!("node.id {node_id:?} is not a number")))?;
        Ok(Some(MetaProperties {
            cluster_id: field("cluster.id")?,
            node_id,
            directory_id: field("directory.id")?,
        }))
    }

    /// Writes the file durably (a synced temporary file renamed into place).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(META_PROPERTIES_FILE);
        let tmp = dir.join(format!("{META_PROPERTIES_FILE}.tmp"));
        let text = format!(
            "#\n#Written by Caudal; identifies this data directory. Do not edit.\n\
             version=1\ncluster.id={}\nnode.id={}\ndirectory.id={}\n",
            self.cluster_id, self.node_id, self.directory_id
        );
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    }
}

/// Refuses a directory that `meta.properties` gives to another node. Call it before anything
/// in the directory is opened.
pub fn check_node(dir: &Path, node_id: i32) -> Result<(), MetaPropertiesError> {
    match MetaProperties::read(dir)? {
        Some(props) if props.node_id != node_id => Err(MetaPropertiesError::OtherNode {
            path: dir.join(META_PROPERTIES_FILE),
            found: props.node_id,
            configured: node_id,
        }),
        _ => Ok(()),
    }
}

/// Checks `meta.properties` against the cluster the directory's topics belong to, writing it on
/// the first start (a directory of an earlier Caudal gets one with its cluster id kept).
pub fn ensure(dir: &Path, cluster_id: &str, node_id: i32) -> Result<(), MetaPropertiesError> {
    let path = dir.join(META_PROPERTIES_FILE);
    match MetaProperties::read(dir)? {
        Some(props) if props.cluster_id != cluster_id => Err(MetaPropertiesError::OtherCluster {
            path,
            found: props.cluster_id,
            expected: cluster_id.to_string(),
        }),
        Some(props) if props.node_id != node_id => Err(MetaPropertiesError::OtherNode {
            path,
            found: props.node_id,
            configured: node_id,
        }),
        Some(_) => Ok(()),
        None => MetaProperties {
            cluster_id: cluster_id.to_string(),
            node_id,
            directory_id: Uuid::new_v4().simple().to_string(),
        }
        .write(dir)
        .map_err(|source| MetaPropertiesError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_writes_the_file_and_later_starts_check_it() {
        let dir = tempfile::tempdir().unwrap();
        check_node(dir.path(), 1).unwrap();
        ensure(dir.path(), "abc", 1).unwrap();
        let props = MetaProperties::read(dir.path()).unwrap().unwrap();
        assert_eq!((props.cluster_id.as_str(), props.node_id), ("abc", 1));
        assert_eq!(props.directory_id.len(), 32);
        // Again: nothing changes.
        ensure(dir.path(), "abc", 1).unwrap();
        assert_eq!(MetaProperties::read(dir.path()).unwrap().unwrap(), props);

        let err = check_node(dir.path(), 2).unwrap_err();
        assert!(matches!(
            err,
            MetaPropertiesError::OtherNode {
                found: 1,
                configured: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("--node-id 1"), "{err}");
        let err = ensure(dir.path(), "xyz", 1).unwrap_err();
        assert!(
            matches!(err, MetaPropertiesError::OtherCluster { .. }),
            "{err}"
        );
    }

    #[test]
    fn kafkas_layout_is_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(META_PROPERTIES_FILE),
            "#\n#Mon Nov 30 00:00:00 UTC 2026\nnode.id=3\ndirectory.id=J8aAPcfLQt2bqs1JT_rMgQ\n\
             version=1\ncluster.id=MkU3OEVBNTcwNTJENDM2Qk\n",
        )
        .unwrap();
        let props = MetaProperties::read(dir.path()).unwrap().unwrap();
        assert_eq!(props.node_id, 3);
        assert_eq!(props.cluster_id, "MkU3OEVBNTcwNTJENDM2Qk");
        assert_eq!(props.directory_id, "J8aAPcfLQt2bqs1JT_rMgQ");
    }

    #[test]
    fn a_malformed_file_is_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        for (text, problem) in [
            (
                "version=0\nnode.id=1\ncluster.id=a\ndirectory.id=b\n",
                "version 0",
            ),
            (
                "version=1\nnode.id=x\ncluster.id=a\ndirectory.id=b\n",
                "node.id",
            ),
            ("version=1\nnode.id=1\ndirectory.id=b\n", "no cluster.id"),
            ("garbage\n", "not key=value"),
        ] {
            fs::write(dir.path().join(META_PROPERTIES_FILE), text).unwrap();
            let err = MetaProperties::read(dir.path()).unwrap_err();
            assert!(err.to_string().contains(problem), "{text:?}: {err}");
        }
    }
}
