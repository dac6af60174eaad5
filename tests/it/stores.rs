//! Which ledger the daemons under test keep. The whole suite runs against sled (the
//! default) and, with `RAMP_TEST_STORE=postgres`, against PostgreSQL: each installation
//! (each [`TestDir`]) gets a database of its own on one cluster the test process shares,
//! so a daemon restarted on the same directory finds its ledger again, and installations
//! that share a ledger (several nodes) share a database. [`TestLedger`] is the library's
//! own view of that ledger, for tests that read it or tamper with it behind the daemon's
//! back, on either engine.

use std::sync::{Arc, OnceLock};

use chrono::Utc;
use ramp_ca::domain::audit::{chain_hash, AuditRecord};
use ramp_ca::domain::cert::CertRecord;
use ramp_ca::domain::session::SessionMeta;
use ramp_ca::pgstore::PoolSettings;
use ramp_ca::store::{AuditReport, Change, Ledger, Location, SledLedger};

use crate::postgres::{PgCluster, Sql};
use crate::support::TestDir;

/// Whether this run keeps the daemons' ledgers in PostgreSQL (`RAMP_TEST_STORE=postgres`).
pub fn postgres_run() -> bool {
    match std::env::var("RAMP_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Ok("") | Err(_) => false,
        Ok(other) => panic!("RAMP_TEST_STORE={other}: give sled or postgres"),
    }
}

/// The cluster every test database of this process lives on, started on first use and
/// stopped once the process is gone.
fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = PgCluster::start_shared();
        cluster.stop_after_exit_of(std::process::id());
        cluster
    })
}

/// A database of an installation's own, dropped when the last daemon and directory using
/// it are gone.
pub struct TestDb {
    /// What `serve --store` gets.
    pub url: String,
    name: String,
}

impl TestDb {
    pub fn create() -> Arc<TestDb> {
        let cluster = cluster();
        let name = format!("t_{}", hex::encode(rand::random::<[u8; 8]>()));
        Sql::connect(&cluster.url()).batch(&format!("CREATE DATABASE {name}"));
        Arc::new(TestDb {
            url: cluster.url_of(&name),
            name,
        })
    }
}

impl TestDb {
    /// A database of its own holding what `from` holds now (nobody may be connected to it).
    pub fn copy_of(from: &TestDb) -> Arc<TestDb> {
        let cluster = cluster();
        let name = format!("t_{}", hex::encode(rand::random::<[u8; 8]>()));
        Sql::connect(&cluster.url())
            .batch(&format!("CREATE DATABASE {name} TEMPLATE {}", from.name));
        Arc::new(TestDb {
            url: cluster.url_of(&name),
            name,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop_it = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let run = move || Sql::connect(&cluster().url()).batch(&drop_it);
        // Dropped inside a test's async runtime (a browser test's rig): the blocking client
        // starts a runtime of its own, so it runs on a thread of its own.
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::spawn(run).join();
        } else {
            run();
        }
    }
}

/// The ledger of an installation, opened by the library itself: sled under its `data/`
/// (the daemon stopped, since sled allows one user), or its PostgreSQL database.
pub struct TestLedger {
    runtime: tokio::runtime::Runtime,
    ledger: Option<Ledger>,
    /// The database, for raw statements, when the ledger is in PostgreSQL.
    sql: Option<Sql>,
}

impl TestLedger {
    pub fn open(dir: &TestDir) -> TestLedger {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (location, sql) = match dir.store_db() {
            Some(db) => (
                Location::Postgres {
                    url: db.url.clone(),
                    pool: PoolSettings::default(),
                },
                Some(Sql::connect(&db.url)),
            ),
            None => (Location::Embedded, None),
        };
        let ledger = runtime
            .block_on(Ledger::open(&dir.join("data"), &location))
            .expect("open the ledger");
        TestLedger {
            runtime,
            ledger: Some(ledger),
            sql,
        }
    }

    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().expect("open")
    }

    fn sled(&self) -> &SledLedger {
        self.ledger().raw_sled().expect("the ledger is in sled")
    }

    pub fn cert(&self, serial: u64) -> Option<CertRecord> {
        self.runtime
            .block_on(self.ledger().cert(serial))
            .expect("read")
    }

    pub fn session(&self, id: &str) -> Option<SessionMeta> {
        self.runtime
            .block_on(self.ledger().session(id))
            .expect("read")
    }

    pub fn audit_upto(&self, upto: u64) -> Vec<AuditRecord> {
        self.runtime
            .block_on(self.ledger().audit_upto(upto))
            .expect("read")
    }

    pub fn verify_audit(&self) -> AuditReport {
        self.runtime
            .block_on(self.ledger().verify_audit())
            .expect("read")
    }

    /// Commits `change` as the service would, and waits until it is durable.
    pub fn commit(&self, change: Change) {
        self.runtime
            .block_on(self.ledger().commit(change, Utc::now()))
            .expect("commit");
    }

    /// Stores `records` as they are, over what the chain holds at their numbers: what
    /// someone who can write the ledger does.
    pub fn put_audit(&self, records: &[serde_json::Value]) {
        for r in records {
            let seq = r["seq"].as_u64().expect("seq");
            match &self.sql {
                Some(sql) => sql.batch(&format!(
                    "UPDATE audit SET record = {}::json WHERE seq = {seq}",
                    literal(&r.to_string())
                )),
                None => {
                    self.sled()
                        .raw_audit_tree()
                        .insert(seq.to_be_bytes(), r.to_string().as_bytes())
                        .expect("write");
                }
            }
        }
        self.flush();
    }

    /// Record `seq` as stored, as JSON.
    pub fn raw_audit(&self, seq: u64) -> serde_json::Value {
        let text = match &self.sql {
            Some(sql) => sql
                .column(&format!("SELECT record::text FROM audit WHERE seq = {seq}"))
                .pop()
                .expect("the record"),
            None => {
                let raw = self.sled().raw_audit_tree().get(seq.to_be_bytes());
                String::from_utf8(raw.expect("read").expect("the record").to_vec()).unwrap()
            }
        };
        serde_json::from_str(&text).expect("JSON")
    }

    /// Removes record `seq` from the chain (not its head).
    pub fn remove_audit(&self, seq: u64) {
        match &self.sql {
            Some(sql) => sql.batch(&format!("DELETE FROM audit WHERE seq = {seq}")),
            None => {
                self.sled()
                    .raw_audit_tree()
                    .remove(seq.to_be_bytes())
                    .expect("write");
            }
        }
        self.flush();
    }

    /// The newest record's number as stored (whatever the head says).
    pub fn last_audit_seq(&self) -> u64 {
        match &self.sql {
            Some(sql) => sql.column("SELECT max(seq)::text FROM audit")[0]
                .parse()
                .unwrap(),
            None => {
                let (k, _) = self.sled().raw_audit_tree().last().unwrap().unwrap();
                u64::from_be_bytes(k.as_ref().try_into().unwrap())
            }
        }
    }

    /// Moves the chain's head, as a rewrite that covers its tracks does.
    pub fn set_head(&self, seq: u64, hash: &str) {
        match &self.sql {
            Some(sql) => sql.batch(&format!(
                "UPDATE audit_head SET seq = {seq}, hash = {}",
                literal(hash)
            )),
            None => {
                let head = serde_json::json!({"seq": seq, "hash": hash});
                self.sled()
                    .raw_meta_tree()
                    .insert("audit_head", serde_json::to_vec(&head).unwrap())
                    .expect("write");
            }
        }
        self.flush();
    }

    /// What someone who can write the ledger (but not `keys/`) does: changes record `seq`'s
    /// actor, re-hashes it and every record after it, and moves the head along, so the
    /// chain's own hashes say nothing is wrong.
    pub fn rewrite_and_rehash(&self, seq: u64) {
        let all = self.audit_upto(u64::MAX >> 1);
        let mut prev = all[seq as usize - 2].hash.clone();
        let mut rewritten = Vec::new();
        for mut r in all.into_iter().skip(seq as usize - 1) {
            if r.seq == seq {
                r.actor = "mallory".into();
            }
            r.prev = prev;
            r.hash = chain_hash(&r);
            prev = r.hash.clone();
            rewritten.push(serde_json::to_value(&r).unwrap());
        }
        let last = rewritten.last().and_then(|r| r["seq"].as_u64()).unwrap();
        self.put_audit(&rewritten);
        self.set_head(last, &prev);
    }

    /// sled's writes on disk before someone else opens it (PostgreSQL's are committed).
    fn flush(&self) {
        self.runtime
            .block_on(self.ledger().on_disk())
            .expect("on disk");
    }
}

impl Drop for TestLedger {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger.take() {
            let _ = self.runtime.block_on(ledger.on_disk());
            // Dropped inside the runtime: its connections close with it.
            self.runtime.block_on(async move { drop(ledger) });
        }
    }
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
