//! The export macro.

/// Exports a plugin's root module from a `cdylib` crate.
///
/// * `name`: the plugin's name, `^[a-z][a-z0-9_]{0,63}$`; the host
///   refuses a library whose file or directory name says otherwise.
/// * `manifest`: the plugin.toml text, usually `include_str!("../plugin.toml")`.
/// * `readme` (optional): the README text, usually
///   `include_str!("../README.md")`. A lone library then carries its own
///   README into the package the host writes of it (a download, a backup);
///   without it the host writes one from the manifest's summary.
/// * `routers` (optional): a `fn() -> Vec<Router>`. A plugin without
///   routers is a capability plugin (its manifest has no `[app]` table):
///   it works through its hooks and tasks only.
/// * `init` (optional): a `fn(&Host) -> Result<(), String>` run once after
///   loading, before any request.
/// * `start` (optional): an `async fn() -> Result<(), String>` run after
///   `init`, in dependency order, before the plugin's routes are served;
///   it may spawn tasks ([`Host::spawn`](crate::Host::spawn)). An error or
///   a time-out makes the plugin `error` with the reason; the others serve.
/// * `stop` (optional): an `async fn() -> Result<(), String>` run when the
///   plugin is uninstalled, replaced by an upgrade (after the new build
///   started) or the host stops, in reverse dependency order; its tasks
///   are cancelled after it.
/// * `authenticate` (optional): an `async fn(String) -> Result<Option<i64>,
///   String>` given the `Authorization` header of an admin request the
///   host's guard does not recognise: the id of the user the credential
///   stands for, `None` when it is not this plugin's, an error when it is
///   but is refused (revoked, expired). Since 1.5.
/// * `authorize` (optional): an `async fn(AdminCall) -> Decision`, asked
///   after RBAC whether a caller may call an admin route. Since 1.5.
///
/// The crate's `sql/` directory (`sql/<backend>/<script>.sql`), if it has
/// one, is embedded into the library as well, so a lone library creates
/// its tables like a package does. (The crate must be named `plugin-api`
/// in the plugin's dependencies, as `plughost plugin new` writes it.)
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        manifest: $manifest:expr
        $(, readme: $readme:expr)?
        $(, routers: $routers:path)?
        $(, init: $init:path)?
        $(, start: $start:path)?
        $(, stop: $stop:path)?
        $(, authenticate: $authenticate:path)?
        $(, authorize: $authorize:path)?
        $(,)?
    ) => {
        static __PLUGHOST_PLUGIN: $crate::__private::PluginState = $crate::__private::PluginState::new(
            $name,
            $crate::__private::routers_or_none!($($routers)?),
            $crate::__private::init_or_none!($($init)?),
            $crate::__private::hook_or_none!($($start)?),
            $crate::__private::hook_or_none!($($stop)?),
            $crate::__private::access_hook_or_none!(authenticate $($authenticate)?),
            $crate::__private::access_hook_or_none!(authorize $($authorize)?),
        );

        #[doc(hidden)]
        struct __PluginHandlers;

        #[derive($crate::__private::rust_embed::RustEmbed)]
        #[folder = "sql/"]
        #[prefix = "sql/"]
        #[allow_missing = true]
        #[crate_path = "plugin_api::__private::rust_embed"]
        #[doc(hidden)]
        struct __PluginSql;

        impl $crate::__private::StateAccess for __PluginHandlers {
            fn state() -> &'static $crate::__private::PluginState {
                &__PLUGHOST_PLUGIN
            }
            fn files() -> ::std::vec::Vec<(::std::string::String, ::std::string::String)> {
                #[allow(unused_mut)]
                let mut files: ::std::vec::Vec<(::std::string::String, ::std::string::String)> = __PluginSql::iter()
                    .filter_map(|path| {
                        __PluginSql::get(&path).map(|file| {
                            (
                                path.into_owned(),
                                ::std::string::String::from_utf8_lossy(&file.data).into_owned(),
                            )
                        })
                    })
                    .collect();
                $(files.push((
                    ::std::string::String::from($crate::abi::README_PATH),
                    ::std::string::String::from($readme),
                ));)?
                files
            }
        }

        /// The plugin's root module, as the host sees it (also what
        /// `plugin_api::this_plugin!()` gives a test).
        #[doc(hidden)]
        #[allow(dead_code)]
        pub(crate) fn __plughost_root_module() -> $crate::abi::PluginModRef {
            $crate::__private::root_module::<__PluginHandlers>($name, $manifest)
        }

        #[allow(unsafe_code)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        #[doc(hidden)]
        pub static __PLUGHOST_LIB_HEADER: $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(__plughost_root_module)
            }
            // SAFETY: `erased_module` returns the `PluginModRef` built by `__plughost_root_module`.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModRef,
                >(
                    erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
