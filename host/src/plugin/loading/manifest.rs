//! plugin.toml: one parser and validator, used by discovery, loading and
//! (later) installation alike.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The tags a plugin may carry.
pub const TAGS: &[&str] = &[
    "ai",
    "mcp",
    "agent",
    "auth",
    "storage",
    "notification",
    "task",
    "payment",
    "other",
];

/// The database backends a plugin may declare.
pub const DATABASES: &[&str] = &["mysql", "postgresql", "sqlite"];

/// The apps an extend-level plugin may extend.
pub const EXTEND_TARGETS: &[&str] = &["admin"];

/// A validated plugin.toml.
#[derive(Debug, Clone)]
pub struct PluginManifest {
    /// `[plugin] version`.
    pub version: Version,
    /// `[plugin] depends_on`.
    pub depends_on: Vec<String>,
    /// `[plugin] database`: the backends the plugin supports (empty: any).
    pub databases: Vec<String>,
    /// Extend-level or app-level, with its routers.
    pub kind: PluginKind,
    /// `[settings]`, values rendered as strings.
    pub settings: BTreeMap<String, String>,
    /// `[permissions] http`: the hosts the plugin may send HTTP requests to.
    pub http: Vec<super::permissions::HostPattern>,
    /// `[permissions] events`: other plugins' topics it may subscribe to.
    pub events: Vec<String>,
    /// `[permissions] identity`: what of the identity service it uses
    /// (`users:read`, `users:create`, `tokens:issue`).
    pub identity: Vec<String>,
    /// `[permissions] defines`: permission strings the plugin checks
    /// besides its routes' (so an operator can grant them).
    pub defines: Vec<String>,
    /// `[plugin] isolated = true`: the plugin asks to run in a child
    /// process (the operator decides, with `PLUGHOST_ISOLATED_PLUGINS`).
    pub isolated: bool,
    /// The whole manifest as JSON, for the list endpoint and the flag store.
    pub json: Value,
}

/// How a plugin's routers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginKind {
    /// `[app] extend = "admin"` and `[api.<router>] prefix = …`.
    Extend {
        /// The app extended.
        target: String,
        /// Router name to its mount prefix.
        routers: BTreeMap<String, String>,
    },
    /// `[app] router = ["router_v1"]`: routers carry their own prefixes.
    App {
        /// Router names.
        routers: Vec<String>,
    },
    /// No `[app]` and no `[api]`: a capability plugin, which mounts no
    /// routes and works through its hooks and tasks.
    Capability,
}

/// A semantic version `x.y.z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_version(text).ok_or_else(|| format!("'{text}' is not a version x.y.z"))
    }
}

/// What is wrong with a manifest: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin.toml: {field}: {message}")]
pub struct ManifestError {
    /// Dotted path of the offending field (`plugin.version`, `api.dict.prefix` …).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether `name` is a valid plugin name: `^[a-z][a-z0-9_]{0,63}$`.
pub fn is_valid_plugin_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// What a plugin may ask of the identity service (`[permissions] identity`).
pub const IDENTITY_GRANTS: [&str; 3] = ["users:read", "users:create", "tokens:issue"];

/// The plugin name pattern, for messages.
pub const PLUGIN_NAME_PATTERN: &str = "^[a-z][a-z0-9_]{0,63}$";

fn is_router_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '-'))
}

fn is_setting_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A setting's value as the plugin reads it: strings as they are, numbers,
/// booleans and dates as TOML writes them, arrays and tables as JSON text.
fn setting_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => to_json(value).to_string(),
        _ => value.to_string(),
    }
}

/// A TOML value as JSON (dates and times as their TOML text).
fn to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

fn parse_version(text: &str) -> Option<Version> {
    let mut parts = text.split('.');
    let mut next = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return None;
        }
        p.parse().ok()
    };
    let v = Version(next()?, next()?, next()?);
    parts.next().is_none().then_some(v)
}

fn string_field<'a>(
    table: &'a toml::Table,
    section: &str,
    key: &str,
    max: usize,
) -> Result<&'a str, ManifestError> {
    let field = format!("{section}.{key}");
    let value = table
        .get(key)
        .ok_or_else(|| err(&field, "is required"))?
        .as_str()
        .ok_or_else(|| err(&field, "must be a string"))?;
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(err(
            &field,
            format!("must be 1 to {max} characters long (is {len})"),
        ));
    }
    Ok(value)
}

fn string_list(value: &toml::Value, field: &str) -> Result<Vec<String>, ManifestError> {
    value
        .as_array()
        .ok_or_else(|| err(field, "must be a list of strings"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| err(field, "must be a list of strings"))
        })
        .collect()
}

fn table<'a>(value: &'a toml::Value, field: &str) -> Result<&'a toml::Table, ManifestError> {
    value
        .as_table()
        .ok_or_else(|| err(field, "must be a table"))
}

impl PluginManifest {
    /// Parses and validates plugin.toml text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            err("(document)", format!("not valid TOML: {}", e.message()))
        })?;
        for key in doc.keys() {
            if !matches!(
                key.as_str(),
                "plugin" | "app" | "api" | "settings" | "permissions"
            ) {
                return Err(err(
                    key.as_str(),
                    "unknown table (allowed: plugin, app, api, settings, permissions)",
                ));
            }
        }

        let plugin = table(
            doc.get("plugin")
                .ok_or_else(|| err("plugin", "the [plugin] table is required"))?,
            "plugin",
        )?;
        string_field(plugin, "plugin", "summary", 100)?;
        string_field(plugin, "plugin", "description", 500)?;
        string_field(plugin, "plugin", "author", 50)?;
        let version_text = string_field(plugin, "plugin", "version", 64)?;
        let version = parse_version(version_text).ok_or_else(|| {
            err(
                "plugin.version",
                format!("'{version_text}' is not a version of the form x.y.z"),
            )
        })?;
        if let Some(tags) = plugin.get("tags") {
            for tag in string_list(tags, "plugin.tags")? {
                if !TAGS.contains(&tag.as_str()) {
                    return Err(err(
                        "plugin.tags",
                        format!("unknown tag '{tag}' (allowed: {})", TAGS.join(", ")),
                    ));
                }
            }
        }
        let databases = match plugin.get("database") {
            Some(dbs) => string_list(dbs, "plugin.database")?,
            None => Vec::new(),
        };
        if let Some(db) = databases
            .iter()
            .find(|db| !DATABASES.contains(&db.as_str()))
        {
            return Err(err(
                "plugin.database",
                format!(
                    "unknown database '{db}' (allowed: {})",
                    DATABASES.join(", ")
                ),
            ));
        }
        if let Some(icon) = plugin.get("icon")
            && !icon.is_str()
        {
            return Err(err("plugin.icon", "must be a string"));
        }
        let isolated = match plugin.get("isolated") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => return Err(err("plugin.isolated", "must be true or false")),
        };
        let depends_on = match plugin.get("depends_on") {
            Some(deps) => string_list(deps, "plugin.depends_on")?,
            None => Vec::new(),
        };
        if let Some(bad) = depends_on.iter().find(|d| !is_valid_plugin_name(d)) {
            return Err(err(
                "plugin.depends_on",
                format!("'{bad}' is not a plugin name ({PLUGIN_NAME_PATTERN})"),
            ));
        }

        let kind = match (doc.get("app"), doc.get("api")) {
            (None, None) => PluginKind::Capability,
            (None, Some(_)) => {
                return Err(err(
                    "app",
                    "[api] routers need an [app] table with extend = \"admin\" (or leave both out for a plugin without routes)",
                ));
            }
            (Some(app), Some(api)) => Self::extend_kind(table(app, "app")?, table(api, "api")?)?,
            (Some(app), None) => Self::app_kind(table(app, "app")?)?,
        };

        let mut settings = BTreeMap::new();
        if let Some(s) = doc.get("settings") {
            for (key, value) in table(s, "settings")? {
                if !is_setting_key(key) {
                    return Err(err(
                        format!("settings.{key}"),
                        "setting keys must be environment variable names (^[A-Za-z_][A-Za-z0-9_]*$), \
                         since the variable of the same name overrides the setting",
                    ));
                }
                settings.insert(key.clone(), setting_text(value));
            }
        }

        let mut http = Vec::new();
        let mut events = Vec::new();
        let mut identity = Vec::new();
        let mut defines = Vec::new();
        if let Some(p) = doc.get("permissions") {
            for (key, value) in table(p, "permissions")? {
                match key.as_str() {
                    "http" => {
                        let list = string_list(value, "permissions.http")?;
                        http = super::permissions::parse_all(list.iter().map(String::as_str))
                            .map_err(|e| err("permissions.http", e))?;
                    }
                    "events" => {
                        events = string_list(value, "permissions.events")?;
                        if let Some(e) = events
                            .iter()
                            .find_map(|t| crate::plugin::services::events::check_topic(t).err())
                        {
                            return Err(err("permissions.events", e));
                        }
                    }
                    "identity" => {
                        identity = string_list(value, "permissions.identity")?;
                        if let Some(bad) = identity
                            .iter()
                            .find(|g| !IDENTITY_GRANTS.contains(&g.as_str()))
                        {
                            return Err(err(
                                "permissions.identity",
                                format!(
                                    "'{bad}' is not something the identity service grants (allowed: {})",
                                    IDENTITY_GRANTS.join(", ")
                                ),
                            ));
                        }
                    }
                    "defines" => {
                        defines = string_list(value, "permissions.defines")?;
                        if let Some(bad) = defines.iter().find(|p| !crate::auth::is_permission(p)) {
                            return Err(err(
                                "permissions.defines",
                                format!(
                                    "'{bad}' is not a permission string (like sys:dict:add: letters, digits, '_', '-', separated by ':')"
                                ),
                            ));
                        }
                    }
                    other => {
                        return Err(err(
                            format!("permissions.{other}"),
                            "unknown permission (allowed: http, events, identity, defines)",
                        ));
                    }
                }
            }
        }

        let json = to_json(&toml::Value::Table(doc));
        Ok(Self {
            version,
            depends_on,
            databases,
            kind,
            settings,
            http,
            events,
            identity,
            defines,
            isolated,
            json,
        })
    }

    fn extend_kind(app: &toml::Table, api: &toml::Table) -> Result<PluginKind, ManifestError> {
        if app.contains_key("router") {
            return Err(err(
                "app.router",
                "an extend-level plugin ([api] present) must not list app.router",
            ));
        }
        let target = app
            .get("extend")
            .ok_or_else(|| err("app.extend", "is required when [api] is present"))?
            .as_str()
            .ok_or_else(|| err("app.extend", "must be a string"))?;
        if !EXTEND_TARGETS.contains(&target) {
            return Err(err(
                "app.extend",
                format!(
                    "'{target}' is not an app of this host (known: {})",
                    EXTEND_TARGETS.join(", ")
                ),
            ));
        }
        if api.is_empty() {
            return Err(err(
                "api",
                "must declare at least one router ([api.<name>])",
            ));
        }
        let mut routers = BTreeMap::new();
        for (name, value) in api {
            let field = format!("api.{name}");
            if !is_router_name(name) {
                return Err(err(
                    &field,
                    "router names must match ^[a-zA-Z_][a-zA-Z0-9_]*$",
                ));
            }
            let router = table(value, &field)?;
            let prefix = router
                .get("prefix")
                .ok_or_else(|| err(format!("{field}.prefix"), "is required"))?
                .as_str()
                .ok_or_else(|| err(format!("{field}.prefix"), "must be a string"))?;
            if !is_prefix(prefix) {
                return Err(err(
                    format!("{field}.prefix"),
                    format!("'{prefix}' must start with / and match ^/[a-zA-Z0-9_/-]*$"),
                ));
            }
            if let Some(tags) = router.get("tags")
                && !tags.is_str()
            {
                return Err(err(format!("{field}.tags"), "must be a string"));
            }
            routers.insert(name.clone(), prefix.to_owned());
        }
        Ok(PluginKind::Extend {
            target: target.to_owned(),
            routers,
        })
    }

    fn app_kind(app: &toml::Table) -> Result<PluginKind, ManifestError> {
        if app.contains_key("extend") {
            return Err(err(
                "app.extend",
                "an extend-level plugin needs an [api] table with its routers",
            ));
        }
        let routers = string_list(
            app.get("router").ok_or_else(|| {
                err(
                    "app.router",
                    "is required for an app-level plugin (no [api] table)",
                )
            })?,
            "app.router",
        )?;
        if routers.is_empty() {
            return Err(err("app.router", "must name at least one router"));
        }
        if let Some(bad) = routers.iter().find(|r| !is_router_name(r)) {
            return Err(err(
                "app.router",
                format!("'{bad}' is not a router name (^[a-zA-Z_][a-zA-Z0-9_]*$)"),
            ));
        }
        Ok(PluginKind::App { routers })
    }

    /// The manifest as the list endpoint and flag store show it: the
    /// manifest's tables with `plugin.name` and `plugin.enable` added.
    pub fn flag_value(&self, name: &str, enabled: bool) -> Value {
        let mut json = self.json.clone();
        if let Some(Value::Object(plugin)) = json.get_mut("plugin") {
            plugin.insert("name".into(), Value::from(name));
        }
        crate::plugin::running::status::set_enable(&mut json, enabled);
        json
    }
}

/// A manifest-less list entry for a plugin that failed before its manifest was read.
pub fn placeholder_value(name: &str) -> Value {
    let mut plugin = Map::new();
    plugin.insert("name".into(), Value::from(name));
    plugin.insert("enable".into(), Value::from("0"));
    let mut root = Map::new();
    root.insert("plugin".into(), Value::Object(plugin));
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"[plugin]
summary = "s"
version = "1.2.3"
description = "d"
author = "a"
"#;

    fn check(extra: &str, expected: Result<(), &str>) {
        let text = format!("{BASE}{extra}");
        match (PluginManifest::parse(&text), expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(field)) => assert_eq!(e.field, field, "{e}"),
            (got, want) => panic!("for\n{text}\nwanted {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn manifests_are_accepted_or_refused_naming_the_field() {
        check("[app]\nrouter = [\"router_v1\"]\n", Ok(()));
        check(
            "[app]\nextend = \"admin\"\n[api.dict_data]\nprefix = \"/dict-datas\"\ntags = \"t\"\n",
            Ok(()),
        );
        // A capability plugin: no routes, hooks and tasks only.
        check("", Ok(()));
        check("[api.x]\nprefix = \"/x\"\n", Err("app"));
        check("[app]\nrouter = []\n", Err("app.router"));
        check(
            "[permissions]\nhttp = [\"api.github.com\", \"*.example.com:8443\"]\n",
            Ok(()),
        );
        check(
            "[permissions]\nhttp = [\"https://api.github.com\"]\n",
            Err("permissions.http"),
        );
        check(
            "[permissions]\nhttp = \"api.github.com\"\n",
            Err("permissions.http"),
        );
        check("[permissions]\nsmtp = []\n", Err("permissions.smtp"));
        check(
            "[permissions]\nevents = [\"notice.*\", \"user.deleted\"]\n",
            Ok(()),
        );
        check(
            "[permissions]\nevents = [\"notice\"]\n",
            Err("permissions.events"),
        );
        check("[app]\n", Err("app.router"));
        check("[app]\nrouter = [\"9x\"]\n", Err("app.router"));
        check("[app]\nextend = \"admin\"\n", Err("app.extend"));
        check(
            "[app]\nextend = \"shop\"\n[api.x]\nprefix = \"/x\"\n",
            Err("app.extend"),
        );
        check(
            "[app]\nextend = \"admin\"\n[api.x]\nprefix = \"x\"\n",
            Err("api.x.prefix"),
        );
        check(
            "[app]\nextend = \"admin\"\n[api.x]\nprefix = \"/a b\"\n",
            Err("api.x.prefix"),
        );
        check("[app]\nextend = \"admin\"\n[api.x]\n", Err("api.x.prefix"));
        check(
            "[app]\nextend = \"admin\"\n[api.\"1x\"]\nprefix = \"/x\"\n",
            Err("api.1x"),
        );
        check(
            "[app]\nextend = \"admin\"\nrouter = [\"r\"]\n[api.x]\nprefix = \"/x\"\n",
            Err("app.router"),
        );
        check("[app]\nrouter = [\"r\"]\n[extra]\n", Err("extra"));
        check(
            "[app]\nrouter = [\"r\"]\n[settings]\n\"a-b\" = 1\n",
            Err("settings.a-b"),
        );
        check(
            "[app]\nrouter = [\"r\"]\n[settings]\nlower_case = 1\n",
            Ok(()),
        );
        check(
            "[app]\nrouter = [\"r\"]\n[settings]\nKEY = \"v\"\nN = 3\n",
            Ok(()),
        );
    }

    #[test]
    fn settings_take_any_toml_value() {
        let text = format!(
            "{BASE}[app]\nrouter = [\"r\"]\n[settings]\n\
             RBAC_CASBIN_EXCLUDE = [[\"POST\", \"/api/v1/auth/logout\"], [\"POST\", \"/api/v1/auth/token/new\"]]\n\
             AI_PROVIDERS = [{{ name = \"openai\", timeout = 30 }}]\n\
             LIMITS = {{ rpm = 60, burst = 1.5 }}\n\
             SINCE = 2026-01-02T03:04:05Z\n\
             WINDOWS = [{{ from = 08:00:00, to = 18:00:00 }}]\n\
             NAME = \"x\"\nN = 3\nON = true\n"
        );
        let m = PluginManifest::parse(&text).unwrap();
        let json = |key: &str| serde_json::from_str::<Value>(&m.settings[key]).unwrap();
        assert_eq!(
            json("RBAC_CASBIN_EXCLUDE"),
            serde_json::json!([
                ["POST", "/api/v1/auth/logout"],
                ["POST", "/api/v1/auth/token/new"]
            ])
        );
        assert_eq!(
            json("AI_PROVIDERS"),
            serde_json::json!([{"name": "openai", "timeout": 30}])
        );
        assert_eq!(json("LIMITS"), serde_json::json!({"rpm": 60, "burst": 1.5}));
        assert_eq!(m.settings["SINCE"], "2026-01-02T03:04:05Z");
        assert_eq!(
            json("WINDOWS"),
            serde_json::json!([{"from": "08:00:00", "to": "18:00:00"}])
        );
        assert_eq!(m.json["settings"]["SINCE"], "2026-01-02T03:04:05Z");
        assert_eq!(m.settings["NAME"], "x");
        assert_eq!(m.settings["N"], "3");
        assert_eq!(m.settings["ON"], "true");
    }

    #[test]
    fn plugin_table_fields_are_checked() {
        let cases: &[(&str, &str)] = &[
            ("summary = \"\"", "plugin.summary"),
            ("version = \"1.0\"", "plugin.version"),
            ("version = \"1.0.x\"", "plugin.version"),
            ("version = \"01.0.0\"", "plugin.version"),
            ("author = 5", "plugin.author"),
            ("tags = [\"games\"]", "plugin.tags"),
            ("database = [\"oracle\"]", "plugin.database"),
            ("depends_on = [\"Bad\"]", "plugin.depends_on"),
        ];
        for (line, field) in cases {
            let key = line.split(' ').next().unwrap();
            let body: String = BASE
                .lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect();
            let text = format!("{body}{line}\n[app]\nrouter = [\"r\"]\n");
            let e = PluginManifest::parse(&text).unwrap_err();
            assert_eq!(&e.field, field, "{line}: {e}");
        }
        let long = "x".repeat(101);
        let text = BASE.replace("summary = \"s\"", &format!("summary = \"{long}\""));
        let e = PluginManifest::parse(&format!("{text}[app]\nrouter = [\"r\"]\n")).unwrap_err();
        assert_eq!(e.field, "plugin.summary");
        let e = PluginManifest::parse("[app]\nrouter = [\"r\"]\n").unwrap_err();
        assert_eq!(e.field, "plugin");
        let e = PluginManifest::parse("not toml [").unwrap_err();
        assert_eq!(e.field, "(document)");
    }

    #[test]
    fn plugin_names_follow_the_pattern() {
        for good in ["a", "dict", "a_1", &"a".repeat(64)] {
            assert!(is_valid_plugin_name(good), "{good}");
        }
        for bad in ["", "A", "1a", "_a", "a-b", "..", "a/b", &"a".repeat(65)] {
            assert!(!is_valid_plugin_name(bad), "{bad}");
        }
    }

    #[test]
    fn flag_value_adds_name_and_enable() {
        let m = PluginManifest::parse(&format!("{BASE}[app]\nrouter = [\"r\"]\n")).unwrap();
        let v = m.flag_value("demo", false);
        assert_eq!(v["plugin"]["name"], "demo");
        assert_eq!(v["plugin"]["enable"], "0");
        assert_eq!(v["app"]["router"][0], "r");
        assert_eq!(m.version, Version(1, 2, 3));
    }
}
