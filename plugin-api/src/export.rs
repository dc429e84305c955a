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
/// * `routers`: a `fn() -> Vec<Router>`.
/// * `init` (optional): a `fn(&Host) -> Result<(), String>` run once after
///   loading, before any request.
///
/// The crate's `sql/` directory (`sql/<backend>/<script>.sql`), if it has
/// one, is embedded into the library as well, so a lone library creates
/// its tables like a package does. (The crate must be named `plugin-api`
/// in the plugin's dependencies, as `plughost plugin new` writes it.)
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, manifest: $manifest:expr, $(readme: $readme:expr,)? routers: $routers:path $(, init: $init:path)? $(,)?) => {
        static __PLUGHOST_PLUGIN: $crate::__private::PluginState =
            $crate::__private::PluginState::new($name, $routers, $crate::__private::init_or_none!($($init)?));

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
