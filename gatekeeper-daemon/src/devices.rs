//! The character devices agents may not open: those that reach storage, memory, firmware, input
//! or a device's DMA past the file systems and the hooks that judge them. SCSI generic and bsg
//! devices read and write sectors (SG_IO) without CAP_SYS_RAWIO, device-mapper's control maps
//! a disk's blocks anywhere, NVMe's character devices pass commands through; input devices and
//! uinput read and type an operator's keys; USB devices, vfio and uio drive hardware; the TPM
//! unseals what the host sealed, as a confidential VM's guest device derives its keys; the virtual consoles and serial ports are where an operator
//! types (and a serial port's settings reach I/O ports); a watchdog reboots the host; a PTP clock sets the time chrony
//! follows; a macvtap sends frames onto the host's link past the socket hooks; GPIO, I2C and SPI
//! buses reach the board's own chips; the VGA arbiter changes what PCI devices decode, and a
//! CPU latency request keeps every CPU out of its idle states; rfkill turns the host's radios
//! off; autofs's control acts on the host's automounts.
//!
//! Majors that the kernel hands out as drivers register are read from `/proc/devices` and misc
//! minors from `/proc/misc`, at start and whenever they change ([`read`]); those with a fixed
//! number are listed whether or not their driver is there yet (a node an agent makes for one
//! would reach the driver once the host loads it). Every other registered major and misc minor
//! is listed as registered: what is neither (a driver loaded since the last look) is refused
//! until the next look has judged it.

use std::collections::BTreeMap;

use gatekeeper_common::{
    ALL_MINORS,
    raw_device::{MISC_MAJOR, REFUSED, REGISTERED},
    raw_device_key,
};

pub const PROC_DEVICES: &str = "/proc/devices";
pub const PROC_MISC: &str = "/proc/misc";

/// Fixed numbers (Documentation/admin-guide/devices.txt): (major, minor or [`ALL_MINORS`]).
const FIXED: [(u32, u32); 20] = [
    (4, ALL_MINORS),   // the virtual consoles and serial ports (tty0-63, ttyS*)
    (5, 1),            // /dev/console
    (5, 3),            // /dev/ttyprintk: what is written joins the kernel's log
    (7, ALL_MINORS),   // vcs: the text consoles' screens
    (13, ALL_MINORS),  // input: event devices, mice, joysticks
    (21, ALL_MINORS),  // sg: SCSI generic
    (29, ALL_MINORS),  // fb: the framebuffers, a console's pixels
    (90, ALL_MINORS),  // mtd: raw flash
    (99, ALL_MINORS),  // ppdev: a parallel port's I/O
    (204, ALL_MINORS), // ttyAMA and other serial consoles
    (229, ALL_MINORS), // hvc: hypervisor consoles (the usual cloud and Xen console)
    (189, ALL_MINORS), // usb_device: usbfs's device nodes
    (MISC_MAJOR, 130), // watchdog
    (MISC_MAJOR, 144), // nvram: the CMOS's memory
    (MISC_MAJOR, 196), // vfio
    (MISC_MAJOR, 223), // uinput
    (MISC_MAJOR, 224), // tpm
    (MISC_MAJOR, 231), // snapshot: a hibernation image of all memory
    (MISC_MAJOR, 236), // device-mapper's control
    (MISC_MAJOR, 239), // uhid
];

/// Character majors by the name their driver registers in `/proc/devices`.
const NAMED_MAJORS: [&str; 26] = [
    "bsg",
    "dax",
    "dimmctl",
    "gpiochip",
    "hidraw",
    "i2c",
    "input",
    "ipmidev",
    "ipvtap",
    "macvtap",
    "mei",
    "mtd",
    "ndctl",
    "nvme",
    "nvme-generic",
    "ptp",
    "sg",
    "spi",
    "tpm",
    "tpmrm",
    "uio",
    "usb_device",
    "usbmon",
    "vfio",
    "vfio-dev",
    "watchdog",
];

/// UBI's per-device majors (`ubi0`, `ubi1`, ...): raw flash volumes.
const NAMED_MAJOR_PREFIXES: [&str; 1] = ["ubi"];

/// Misc devices by the name they register in `/proc/misc`.
const NAMED_MISC: [&str; 19] = [
    "autofs",
    // Which devices make up a btrfs: forgetting them fails the host's next mount of one.
    "btrfs-control",
    "cpu_dma_latency",
    "device-mapper",
    "hpet",
    "iommu",
    "nvram",
    "rfkill",
    "sev-guest",
    "sgx_provision",
    "snapshot",
    "tdx_guest",
    "ubi_ctrl",
    "uhid",
    "uinput",
    "vfio",
    "vga_arbiter",
    "vtpmx",
    "watchdog",
];

/// The [`raw_device_key`]s of the devices agents may not open ([`REFUSED`]) and of the other
/// registered ones ([`REGISTERED`]), from the texts of `/proc/devices` and `/proc/misc`: sorted
/// by key, each once, refused where both.
pub fn raw_devices(proc_devices: &str, proc_misc: &str) -> Vec<(u32, u32)> {
    let mut devices = BTreeMap::new();
    let mut list = |key: u32, refused: bool| {
        let value = if refused { REFUSED } else { REGISTERED };
        let listed = devices.entry(key).or_insert(value);
        *listed = (*listed).min(value);
    };
    for &(major, minor) in &FIXED {
        list(raw_device_key(major, minor), true);
    }
    let character = proc_devices
        .lines()
        .skip_while(|line| line.trim() != "Character devices:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty());
    for (major, name) in character.filter_map(numbered) {
        let refused = NAMED_MAJORS.contains(&name)
            || (NAMED_MAJOR_PREFIXES.iter()).any(|prefix| {
                name.strip_prefix(prefix)
                    .is_some_and(|rest| rest.bytes().all(|byte| byte.is_ascii_digit()))
            });
        list(raw_device_key(major, ALL_MINORS), refused);
    }
    for (minor, name) in proc_misc.lines().filter_map(numbered) {
        list(
            raw_device_key(MISC_MAJOR, minor),
            NAMED_MISC.contains(&name),
        );
    }
    devices.into_iter().collect()
}

/// A line of the form `<number> <name>`.
fn numbered(line: &str) -> Option<(u32, &str)> {
    let (number, name) = line.trim().split_once(char::is_whitespace)?;
    Some((number.parse().ok()?, name.trim()))
}

/// [`raw_devices`] of this host now.
pub fn read() -> std::io::Result<Vec<(u32, u32)>> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path)
            .map_err(|error| std::io::Error::new(error.kind(), format!("{path}: {error}")))
    };
    Ok(raw_devices(&read(PROC_DEVICES)?, &read(PROC_MISC)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICES: &str = "Character devices:\n  1 mem\n  4 tty\n 10 misc\n 13 input\n\
        128 ptm\n136 pts\n240 ubi0\n241 ubi_x\n245 hidraw\n248 bsg\n249 watchdog\n250 ptp\n\
        251 nvme-generic\n252 nvme\n253 rtc\n254 gpiochip\n\nBlock devices:\n  8 sd\n 21 sg\n\
        247 nvme\n";
    const MISC: &str = "236 device-mapper\n223 uinput\n 57 iommu\n200 tun\n229 fuse\n232 kvm\n";

    fn value(devices: &[(u32, u32)], major: u32, minor: u32) -> Option<u32> {
        let key = raw_device_key(major, minor);
        devices
            .iter()
            .find(|(listed, _)| *listed == key)
            .map(|(_, value)| *value)
    }

    fn refused(devices: &[(u32, u32)], major: u32, minor: u32) -> bool {
        value(devices, major, minor) == Some(REFUSED)
    }

    #[test]
    fn lists_the_fixed_numbers_without_any_proc_text() {
        let devices = raw_devices("", "");
        assert_eq!(devices.len(), FIXED.len());
        assert!(devices.iter().all(|(_, value)| *value == REFUSED));
        assert!(refused(&devices, 21, ALL_MINORS));
        assert!(refused(&devices, MISC_MAJOR, 236));
    }

    #[test]
    fn refuses_named_character_majors_and_misc_minors() {
        let devices = raw_devices(DEVICES, MISC);
        for major in [240, 245, 248, 249, 250, 251, 252, 254] {
            assert!(refused(&devices, major, ALL_MINORS), "{major}");
        }
        assert!(refused(&devices, MISC_MAJOR, 57), "iommu");
        // The consoles and serial ports are the host's, and so is the kernel's log.
        for (major, minor) in [(4, ALL_MINORS), (5, 1), (5, 3)] {
            assert!(refused(&devices, major, minor), "{major}:{minor}");
        }
    }

    #[test]
    fn lists_the_other_registered_devices_as_registered() {
        let devices = raw_devices(DEVICES, MISC);
        // What agents and their containers use stays theirs: memory devices such as /dev/null,
        // pseudo-terminals and ptmx, rtc reads, tun, fuse, kvm; and the misc major itself, so
        // that its minors are looked up one by one.
        for major in [1, 10, 128, 136, 241, 253] {
            assert_eq!(
                value(&devices, major, ALL_MINORS),
                Some(REGISTERED),
                "{major}"
            );
        }
        for minor in [200, 229, 232] {
            assert_eq!(
                value(&devices, MISC_MAJOR, minor),
                Some(REGISTERED),
                "{minor}"
            );
        }
        // Neither: the kernel refuses them until a look lists them.
        assert_eq!(value(&devices, 60, ALL_MINORS), None);
        assert_eq!(value(&devices, MISC_MAJOR, 242), None);
    }

    #[test]
    fn a_refused_number_within_a_registered_major_stays_refused() {
        // Major 5 is /dev/tty, /dev/console and ptmx: registered as a whole, the console refused.
        let devices = raw_devices("Character devices:\n  5 /dev/tty\n  5 /dev/console\n", "");
        assert_eq!(value(&devices, 5, ALL_MINORS), Some(REGISTERED));
        assert!(refused(&devices, 5, 1));
        // A misc minor listed by number and registered under another name is still refused.
        let devices = raw_devices("", "130 softdog\n");
        assert!(refused(&devices, MISC_MAJOR, 130));
    }

    #[test]
    fn reads_no_block_major_as_a_character_one() {
        let devices = raw_devices(DEVICES, "");
        assert_eq!(value(&devices, 247, ALL_MINORS), None);
        assert_eq!(value(&devices, 8, ALL_MINORS), None);
    }

    #[test]
    fn ignores_lines_it_cannot_read() {
        let devices = raw_devices(
            "Character devices:\nnonsense\n 99\nx bsg\n",
            "bad line\n70000000000 uinput\n",
        );
        assert_eq!(devices, raw_devices("", ""));
    }

    #[test]
    fn each_key_once_and_sorted() {
        let devices = raw_devices(DEVICES, MISC);
        let keys: Vec<u32> = devices.iter().map(|(key, _)| *key).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(keys, sorted);
        assert!(keys.len() < gatekeeper_common::MAX_RAW_DEVICES as usize);
    }
}
