//! The local copy of a stage's ledger (see `quire_core::ledger`): the entries of the
//! ledger partitions this instance holds, on local disk, each partition with the ledger
//! offset it has been read up to, written in the same commit as the entries it covers.
//! So a restart reads a partition's ledger from its checkpoint to the end, not from the
//! beginning, and memory stays bounded whatever the history.
//!
//! The store is redb: a single-file, ACID B-tree in pure Rust. Entries and checkpoint go
//! in one transaction, which is the one guarantee the ledger needs of its store; there are
//! no background threads to supervise; and it builds with the workspace in seconds,
//! where RocksDB would add a C++ build to every cold CI run. fjall (an LSM tree) would
//! write faster, but a stage writes one entry per input, far below what either sustains.

use quire_core::ledger::LedgerEntry;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use std::path::{Path, PathBuf};

/// Per ledger partition: the next ledger offset to read.
const CHECKPOINTS: TableDefinition<u32, i64> = TableDefinition::new("checkpoints");
/// redb's page cache (its default is 1 GiB): lookups hit recent entries, and the
/// rest is a disk read away, so memory stays bounded whatever the history.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// What the store is a copy of (`cluster`: the Kafka cluster id and ledger topic).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Why the store failed, with the file it is.
#[derive(Debug, thiserror::Error)]
#[error("ledger store {path}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One stage instance's ledger entries, by ledger partition.
pub struct LedgerStore {
    db: Database,
    path: PathBuf,
}

/// The table of partition `partition`'s entries (key → the entry as JSON).
fn entries_table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

fn entries_name(partition: i32) -> String {
    format!("entries-{partition}")
}

impl LedgerStore {
    /// Opens the store at `path`, creating it if it is not there.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_waiting(path, std::time::Duration::ZERO)
    }

    fn create(path: &Path, created: Result<Database, redb::DatabaseError>) -> Result<Self> {
        let db = created.map_err(|e| StoreError { path: path.to_owned(), message: e.to_string() })?;
        Ok(LedgerStore { db, path: path.to_owned() })
    }

    /// Opens the store at `path`, waiting up to `patience` while another process holds
    /// it (an instance with the same id, about to be fenced by this one).
    pub fn open_waiting(path: &Path, patience: std::time::Duration) -> Result<Self> {
        let deadline = std::time::Instant::now() + patience;
        let mut said = false;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError { path: path.to_owned(), message: format!("cannot create {}: {e}", dir.display()) })?;
        }
        loop {
            match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    if !std::mem::replace(&mut said, true) {
                        tracing::warn!(path = %path.display(), "ledger store held by another process with this instance id; waiting for it to stop");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                created => return Self::create(path, created),
            }
        }
    }

    fn failed(&self, error: impl Into<redb::Error>) -> StoreError {
        StoreError { path: self.path.clone(), message: error.into().to_string() }
    }

    /// Stores `entries` of ledger partition `partition` (later ones replace earlier
    /// ones with the same key, as compaction does) and records that the partition has
    /// been read up to `next_offset`, in one commit.
    pub fn apply(&self, partition: i32, entries: &[LedgerEntry], next_offset: i64) -> Result<()> {
        self.write(partition, entries, Some(next_offset))
    }

    /// Stores `entries` this instance committed itself, leaving the checkpoint where
    /// reading left it (the next read passes over them again), without waiting for the
    /// disk.
    pub fn put(&self, partition: i32, entries: &[LedgerEntry]) -> Result<()> {
        self.write(partition, entries, None)
    }

    fn write(&self, partition: i32, entries: &[LedgerEntry], next_offset: Option<i64>) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(|e| self.failed(e))?;
        if next_offset.is_none() {
            // Not synced to disk: lost in a crash, they are read again from the ledger,
            // since the checkpoint did not move past them.
            txn.set_durability(redb::Durability::None).map_err(|e| StoreError { path: self.path.clone(), message: e.to_string() })?;
        }
        {
            let name = entries_name(partition);
            let mut table = txn.open_table(entries_table(&name)).map_err(|e| self.failed(e))?;
            for entry in entries {
                let value = serde_json::to_vec(entry).map_err(|e| StoreError { path: self.path.clone(), message: e.to_string() })?;
                table.insert(entry.key.as_str(), value.as_slice()).map_err(|e| self.failed(e))?;
            }
            if let Some(next_offset) = next_offset {
                let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(|e| self.failed(e))?;
                checkpoints.insert(partition as u32, next_offset).map_err(|e| self.failed(e))?;
            }
        }
        txn.commit().map_err(|e| self.failed(e))
    }

    /// Makes the store a copy of `source` (the cluster and ledger topic it reads): a
    /// store left from another cluster, or from a ledger topic since recreated, is
    /// emptied first, so its offsets never apply to another log. Returns whether it was.
    pub fn copy_of(&self, source: &str) -> Result<bool> {
        let txn = self.db.begin_write().map_err(|e| self.failed(e))?;
        let emptied = {
            let mut meta = txn.open_table(META).map_err(|e| self.failed(e))?;
            let known = meta.get("source").map_err(|e| self.failed(e))?.map(|v| v.value().to_owned());
            match known {
                Some(known) if known == source => false,
                known => {
                    meta.insert("source", source).map_err(|e| self.failed(e))?;
                    known.is_some()
                }
            }
        };
        if emptied {
            let names: Vec<String> = txn.list_tables().map_err(|e| self.failed(e))?.map(|t| t.name().to_owned()).collect();
            for name in names.iter().filter(|n| n.starts_with("entries-")) {
                txn.delete_table(entries_table(name)).map_err(|e| self.failed(e))?;
            }
            txn.delete_table(CHECKPOINTS).map_err(|e| self.failed(e))?;
        }
        txn.commit().map_err(|e| self.failed(e))?;
        Ok(emptied)
    }

    /// The entry of `key` in ledger partition `partition`, if any.
    pub fn get(&self, partition: i32, key: &str) -> Result<Option<LedgerEntry>> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e))?;
        let name = entries_name(partition);
        let table = match txn.open_table(entries_table(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        let Some(value) = table.get(key).map_err(|e| self.failed(e))? else { return Ok(None) };
        serde_json::from_slice(value.value()).map(Some).map_err(|e| StoreError { path: self.path.clone(), message: format!("entry {key}: {e}") })
    }

    /// The next ledger offset to read on `partition`; None if it was never read here.
    pub fn checkpoint(&self, partition: i32) -> Result<Option<i64>> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e))?;
        let table = match txn.open_table(CHECKPOINTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        Ok(table.get(partition as u32).map_err(|e| self.failed(e))?.map(|offset| offset.value()))
    }

    /// How many entries partition `partition` holds.
    pub fn len(&self, partition: i32) -> Result<u64> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e))?;
        let name = entries_name(partition);
        match txn.open_table(entries_table(&name)) {
            Ok(table) => table.len().map_err(|e| self.failed(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.failed(e)),
        }
    }
}

impl std::fmt::Debug for LedgerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerStore").field("path", &self.path).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_core::BlockState;

    fn entry(key: &str, state: BlockState, offset: i64) -> LedgerEntry {
        LedgerEntry {
            stage: "inference".into(),
            key: key.into(),
            generation: 0,
            fingerprint: "sha256:00".into(),
            state: Some(state),
            output_keys: vec![format!("{key}-out")],
            input_topic: "quire.blocks.queued".into(),
            input_partition: 2,
            input_offset: offset,
            recorded_at_ms: 1,
        }
    }

    fn store() -> (tempfile::TempDir, LedgerStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LedgerStore::open(&dir.path().join("inference-0/ledger.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn entries_and_their_checkpoint_are_kept_per_partition() {
        let (_dir, store) = store();
        assert_eq!((store.get(2, "a").unwrap(), store.checkpoint(2).unwrap(), store.len(2).unwrap()), (None, None, 0));
        store.apply(2, &[entry("a", BlockState::Queued, 10), entry("b", BlockState::Validating, 11)], 40).unwrap();
        store.apply(2, &[entry("a", BlockState::Validating, 12)], 41).unwrap();
        assert_eq!(store.get(2, "a").unwrap().map(|e| (e.state, e.input_offset)), Some((Some(BlockState::Validating), 12)), "the latest entry per key");
        assert_eq!((store.len(2).unwrap(), store.checkpoint(2).unwrap()), (2, Some(41)));
        assert_eq!((store.get(3, "a").unwrap(), store.checkpoint(3).unwrap()), (None, None), "partitions apart");
    }

    #[test]
    fn what_was_committed_is_there_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let store = LedgerStore::open(&path).unwrap();
            store.apply(1, &[entry("a", BlockState::Completed, 3)], 4).unwrap();
            store.apply(2, &[entry("b", BlockState::Queued, 5)], 6).unwrap();
        }
        let store = LedgerStore::open(&path).unwrap();
        assert_eq!(store.get(1, "a").unwrap().and_then(|e| e.state), Some(BlockState::Completed));
        assert_eq!((store.checkpoint(1).unwrap(), store.checkpoint(2).unwrap()), (Some(4), Some(6)));
    }

    #[test]
    fn a_store_left_from_another_source_is_emptied_before_use() {
        let (_dir, store) = store();
        assert!(!store.copy_of("cluster-a/quire.inference.ledger").unwrap(), "a new store");
        store.apply(2, &[entry("a", BlockState::Queued, 10)], 11).unwrap();
        store.put(2, &[entry("b", BlockState::Queued, 12)]).unwrap();
        assert_eq!((store.len(2).unwrap(), store.checkpoint(2).unwrap()), (2, Some(11)), "put leaves the checkpoint");
        assert!(!store.copy_of("cluster-a/quire.inference.ledger").unwrap(), "the same source");
        assert_eq!(store.len(2).unwrap(), 2);
        assert!(store.copy_of("cluster-b/quire.inference.ledger").unwrap());
        assert_eq!((store.get(2, "a").unwrap(), store.checkpoint(2).unwrap(), store.len(2).unwrap()), (None, None, 0));
    }

    #[test]
    fn a_store_held_by_another_opener_is_waited_for_and_refused_without_patience() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let holder = LedgerStore::open(&path).unwrap();
        let err = LedgerStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("ledger.redb"), "{err}");
        let released = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(holder);
        });
        let store = LedgerStore::open_waiting(&path, std::time::Duration::from_secs(10)).expect("opened once the holder let go");
        released.join().unwrap();
        assert_eq!(store.checkpoint(0).unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        std::fs::write(&path, b"not a database").unwrap();
        let err = LedgerStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("ledger.redb"), "{err}");
    }
}
