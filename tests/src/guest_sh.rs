//! Shell functions the guest scripts share (busybox `sh`), to put in a script with
//! `format!("{NS_DEV}{FIO_VERIFY}...")`.

/// `ns_dev`: prints the first NVMe namespace's block device (`/dev/nvme*n1`) once it
/// appears; fails after 20 s without one.
pub const NS_DEV: &str = r#"ns_dev() {
    for i in $(seq 1 200); do
        for d in /dev/nvme*n1; do [ -b "$d" ] && { echo $d; return 0; }; done
        sleep 0.1
    done
    return 1
}
"#;

/// `verify NAME BS [IODEPTH]`: fio writes 16 MiB of random `BS` blocks on `$DEV` at
/// `IODEPTH` (8) and reads them back checked (crc32c, the first mismatch fatal); says
/// `fio NAME errors=N write_kb=N read_kb=N` (the script's `say`); fails on any error.
pub const FIO_VERIFY: &str = r#"verify() {
    fio --name=$1 --filename=$DEV --ioengine=libaio --direct=1 --iodepth=${3:-8} --rw=randwrite \
        --bs=$2 --size=16M --verify=crc32c --verify_fatal=1 --randrepeat=1 \
        --output-format=terse --terse-version=3 > /tmp/$1.out 2>/tmp/$1.err || { cat /tmp/$1.err; return 1; }
    say "fio $1 errors=$(cut -d';' -f5 /tmp/$1.out) write_kb=$(cut -d';' -f47 /tmp/$1.out) read_kb=$(cut -d';' -f6 /tmp/$1.out)"
    [ "$(cut -d';' -f5 /tmp/$1.out)" = 0 ]
}
"#;
