//! The struct offsets of the running kernel, one global per row of
//! [`gatekeeper_common::kernel_members`], which the daemon fills from the kernel's BTF before
//! loading. Read them through [`crate::read`] only: a plain read would fold the placeholder zero.

macro_rules! offset_globals {
    ($(($global:ident, $structure:literal, $member:literal)),* $(,)?) => {
        $(
            #[doc = concat!("Byte offset of `", $member, "` in `struct ", $structure, "`.")]
            #[unsafe(no_mangle)]
            pub static $global: u32 = 0;
        )*
    };
}

gatekeeper_common::kernel_members!(offset_globals);
