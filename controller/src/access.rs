//! Who may do what: permissions (one per RPC family and action), the three system roles, the calling
//! principal (a user through a session, or an API token acting for a user) and its scope (which datasources,
//! storages and jobs it sees). Pure: the auth layer builds a [`Principal`] per request from the database, the
//! permission table of the gRPC edge names one [`Permission`] per RPC, and handlers ask the principal's
//! [`Scope`] about each resource they touch.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

/// A system role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemRole {
    /// Reads everything except secrets; no restore, no download.
    Viewer,
    /// A viewer who also runs, cancels and verifies backups, runs drills, restores and downloads.
    Operator,
    /// Everything.
    Admin,
}

impl SystemRole {
    /// All, least first.
    pub const ALL: [SystemRole; 3] = [SystemRole::Viewer, SystemRole::Operator, SystemRole::Admin];

    /// Role name.
    pub fn name(self) -> &'static str {
        match self {
            SystemRole::Viewer => "viewer",
            SystemRole::Operator => "operator",
            SystemRole::Admin => "admin",
        }
    }

    /// By name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// What it grants.
    pub fn permissions(self) -> BTreeSet<Permission> {
        Permission::ALL.iter().copied().filter(|p| p.system_roles().contains(&self)).collect()
    }
}

const V: SystemRole = SystemRole::Viewer;
const O: SystemRole = SystemRole::Operator;
const A: SystemRole = SystemRole::Admin;

macro_rules! permissions {
    ($($variant:ident = $name:literal [$($role:ident),*] $desc:literal;)*) => {
        /// One permission: `<family>.<action>`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Permission {
            $(#[doc = $desc] $variant,)*
        }

        impl Permission {
            /// Every permission.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];

            /// Its name.
            pub fn name(self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }

            /// What it allows.
            pub fn description(self) -> &'static str {
                match self { $(Permission::$variant => $desc,)* }
            }

            /// The system roles holding it.
            pub fn system_roles(self) -> &'static [SystemRole] {
                match self { $(Permission::$variant => &[$($role),*],)* }
            }
        }
    };
}

permissions! {
    AgentRead = "agent.read" [V, O, A] "list and get agents";
    AgentEnroll = "agent.enroll" [A] "create join tokens that enroll agents";
    AgentRevoke = "agent.revoke" [A] "revoke an agent";
    DatasourceRead = "datasource.read" [V, O, A] "list and get datasources (never their passwords)";
    DatasourceWrite = "datasource.write" [A] "create and update datasources";
    DatasourceDelete = "datasource.delete" [A] "delete datasources (needs an approval unless admin)";
    DatasourceTest = "datasource.test" [O, A] "test a datasource's connection";
    StorageRead = "storage.read" [V, O, A] "list and get storages (never their credentials)";
    StorageWrite = "storage.write" [A] "create and update storages";
    StorageDelete = "storage.delete" [A] "delete storages (needs an approval unless admin)";
    StorageTest = "storage.test" [O, A] "test a storage";
    JobRead = "job.read" [V, O, A] "list and get backup jobs, preview retention";
    JobWrite = "job.write" [A] "create and update backup jobs";
    JobDelete = "job.delete" [A] "delete backup jobs (needs an approval unless admin)";
    JobRun = "job.run" [O, A] "run a backup job now";
    JobToggle = "job.toggle" [O, A] "enable and disable backup jobs (disabling needs an approval unless admin)";
    BackupRead = "backup.read" [V, O, A] "list and get backups";
    BackupRestore = "backup.restore" [O, A] "restore a backup (into a protected datasource: with an approval unless admin)";
    BackupVerify = "backup.verify" [O, A] "verify a backup's stored copies";
    BackupDownload = "backup.download" [O, A] "download a backup";
    BackupPin = "backup.pin" [O, A] "pin and unpin backups";
    BackupDelete = "backup.delete" [A] "delete backups (needs an approval unless admin)";
    BackupImport = "backup.import" [A] "import a storage's catalog";
    ExecutionRead = "execution.read" [V, O, A] "list, get and watch executions and their logs";
    ExecutionCancel = "execution.cancel" [O, A] "cancel an execution";
    ExecutionDelete = "execution.delete" [A] "delete an ended execution";
    DrillRead = "drill.read" [V, O, A] "list and get restore drills, their runs and evidence";
    DrillWrite = "drill.write" [O, A] "create, update and delete restore drills";
    DrillRun = "drill.run" [O, A] "run a restore drill now";
    NotificationRead = "notification.read" [V, O, A] "list and get notification channels and deliveries";
    NotificationWrite = "notification.write" [A] "create, update, delete and test notification channels";
    NotificationInbox = "notification.inbox" [V, O, A] "read and mark the shared inbox";
    HealthRead = "health.read" [V, O, A] "read datasource, storage and system health";
    AuditRead = "audit.read" [V, O, A] "read the audit log";
    UserRead = "user.read" [V, O, A] "list and get users, list all API tokens";
    UserWrite = "user.write" [A] "create, change, disable and delete users, reset passwords, make service-account tokens";
    RoleRead = "role.read" [V, O, A] "list roles, permissions and scope rules";
    RoleWrite = "role.write" [A] "create, change and delete custom roles and scope rules";
    TokenCreate = "token.create" [V, O, A] "create and revoke one's own API tokens";
    ApprovalRead = "approval.read" [V, O, A] "list and get approvals";
    ApprovalDecide = "approval.decide" [A] "approve or reject another user's critical call";
}

impl Permission {
    /// By name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.name() == name)
    }
}

/// A resource kind scope rules apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A datasource.
    Datasource,
    /// A storage.
    Storage,
    /// A backup job.
    Job,
}

impl ResourceKind {
    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Datasource => "datasource",
            ResourceKind::Storage => "storage",
            ResourceKind::Job => "job",
        }
    }

    /// By name.
    pub fn from_name(s: &str) -> Option<Self> {
        [ResourceKind::Datasource, ResourceKind::Storage, ResourceKind::Job].into_iter().find(|k| k.name() == s)
    }
}

/// What a rule matches: one resource, or every resource carrying these labels.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    /// Resource kind name.
    pub kind: String,
    /// One resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Labels that must all be present with these values (when `id` is absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    fn matches(&self, r: &ResourceRef<'_>) -> bool {
        if self.kind != r.kind.name() {
            return false;
        }
        match self.id {
            Some(id) => id == r.id,
            None => self.labels.iter().all(|(k, v)| r.labels.get(k).and_then(|x| x.as_str()) == Some(v.as_str())),
        }
    }
}

/// A rule of one subject: allow or deny what a selector matches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Rule {
    /// Deny (else allow).
    pub deny: bool,
    /// What it matches.
    #[serde(flatten)]
    pub selector: Selector,
}

/// One set of rules: a resource is visible when no deny rule matches it and, if the set has allow rules for
/// its kind, one of them matches it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet(pub Vec<Rule>);

impl RuleSet {
    fn allows(&self, r: &ResourceRef<'_>) -> bool {
        let kind = r.kind.name();
        if self.0.iter().any(|x| x.deny && x.selector.matches(r)) {
            return false;
        }
        let mut allows = self.0.iter().filter(|x| !x.deny && x.selector.kind == kind).peekable();
        allows.peek().is_none() || allows.any(|x| x.selector.matches(r))
    }
}

/// A resource being looked at: kind, id, labels (a JSON object of strings).
#[derive(Clone, Copy, Debug)]
pub struct ResourceRef<'a> {
    /// Kind.
    pub kind: ResourceKind,
    /// Id.
    pub id: Uuid,
    /// Labels.
    pub labels: &'a serde_json::Value,
}

static NO_LABELS: serde_json::Value = serde_json::Value::Null;

impl<'a> ResourceRef<'a> {
    /// A resource with labels.
    pub fn new(kind: ResourceKind, id: Uuid, labels: &'a serde_json::Value) -> Self {
        Self { kind, id, labels }
    }

    /// A resource known only by id (matched by id rules only).
    pub fn by_id(kind: ResourceKind, id: Uuid) -> ResourceRef<'static> {
        ResourceRef { kind, id, labels: &NO_LABELS }
    }
}

/// Which resources a principal sees: every layer must allow (a token's own limits are one more layer on top
/// of its user's rules, so a token is never wider than its user).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope(pub Vec<RuleSet>);

impl Scope {
    /// Whether the resource is visible.
    pub fn allows(&self, r: ResourceRef<'_>) -> bool {
        self.0.iter().all(|s| s.allows(&r))
    }

    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.0.iter().all(|s| s.0.is_empty())
    }
}

/// How the caller authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A session from Login (or OIDC sign-in).
    Session {
        /// Session id.
        id: Uuid,
    },
    /// An API token.
    Token {
        /// Token id.
        id: Uuid,
        /// Token name.
        name: String,
    },
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// User id.
    pub user_id: Uuid,
    /// User name.
    pub username: String,
    /// How.
    pub via: Via,
    /// Role names (a token: its role).
    pub roles: Vec<String>,
    /// Effective permissions.
    pub permissions: BTreeSet<Permission>,
    /// Whether it holds the system role `admin` (a token: only if its role is admin too).
    pub admin: bool,
    /// What it sees.
    pub scope: Scope,
    /// Expiry of the session or token.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl Principal {
    /// Whether it holds a permission.
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// The actor name written to the audit log: the user, and the token when one was used.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Session { .. } => self.username.clone(),
            Via::Token { name, .. } => format!("{} (token {name})", self.username),
        }
    }

    /// Whether the resource is in scope.
    pub fn sees(&self, r: ResourceRef<'_>) -> bool {
        self.scope.allows(r)
    }
}

/// The permissions of a set of roles: system roles' from code, custom roles' as stored.
pub fn permissions_of<'a>(roles: impl IntoIterator<Item = (&'a str, &'a [String])>) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for (name, custom) in roles {
        match SystemRole::from_name(name) {
            Some(r) => out.extend(r.permissions()),
            None => out.extend(custom.iter().filter_map(|p| Permission::from_name(p))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_family_dot_action_and_unique() {
        let mut seen = BTreeSet::new();
        for p in Permission::ALL {
            let (family, action) = p.name().split_once('.').expect("family.action");
            assert!(!family.is_empty() && !action.is_empty());
            assert!(seen.insert(p.name()), "duplicate {}", p.name());
            assert_eq!(Permission::from_name(p.name()), Some(*p));
            assert!(p.system_roles().contains(&SystemRole::Admin), "admin lacks {}", p.name());
        }
    }

    #[test]
    fn roles_nest_and_viewer_cannot_restore_or_download() {
        let (v, o, a) =
            (SystemRole::Viewer.permissions(), SystemRole::Operator.permissions(), SystemRole::Admin.permissions());
        assert!(v.is_subset(&o) && o.is_subset(&a));
        assert_eq!(a.len(), Permission::ALL.len());
        for p in [Permission::BackupRestore, Permission::BackupDownload, Permission::JobRun] {
            assert!(!v.contains(&p) && o.contains(&p));
        }
        for p in [Permission::UserWrite, Permission::ApprovalDecide, Permission::BackupDelete] {
            assert!(!o.contains(&p));
        }
    }

    #[test]
    fn scope_allow_deny_and_layers() {
        let prod = json!({"team": "a", "env": "prod"});
        let dev = json!({"team": "b"});
        let (p, d) = (Uuid::now_v7(), Uuid::now_v7());
        let ds = |id, l| ResourceRef::new(ResourceKind::Datasource, id, l);
        let sel = |labels: &[(&str, &str)]| Selector {
            kind: "datasource".into(),
            id: None,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        assert!(Scope::default().allows(ds(p, &prod)));
        let team_a = RuleSet(vec![Rule { deny: false, selector: sel(&[("team", "a")]) }]);
        let s = Scope(vec![team_a.clone()]);
        assert!(s.allows(ds(p, &prod)) && !s.allows(ds(d, &dev)));
        // Allow rules on datasources say nothing about storages.
        assert!(s.allows(ResourceRef::by_id(ResourceKind::Storage, d)));
        let deny_prod = Rule { deny: true, selector: sel(&[("env", "prod")]) };
        let s = Scope(vec![RuleSet(vec![team_a.0[0].clone(), deny_prod])]);
        assert!(!s.allows(ds(p, &prod)));
        // A token layer narrows to one id; it can never widen its user's layer.
        let only_d = RuleSet(vec![Rule {
            deny: false,
            selector: Selector { kind: "datasource".into(), id: Some(d), labels: BTreeMap::new() },
        }]);
        let s = Scope(vec![team_a, only_d]);
        assert!(!s.allows(ds(p, &prod)) && !s.allows(ds(d, &dev)));
    }
}
