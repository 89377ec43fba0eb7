//! The target's own records: the region's layout for its options, and listeners.

use crate::listener::ListenerInfo;
use crate::region::{
    Kind, ListenerRec, Region, RegionError, RegionOptions, RegionSizes, Str, MAX_IO_QUEUES,
};
use crate::target::TargetOptions;
use crate::NvmfError;

/// The sizes and options of a region for a target with these options.
pub fn region_params(opts: &TargetOptions) -> (RegionSizes, RegionOptions) {
    let slots = opts.max_queue_depth.max(opts.max_admin_queue_depth)
        + crate::target::PRECONNECT_SLOTS as u16;
    (
        RegionSizes::for_target(slots),
        RegionOptions {
            max_queue_depth: opts.max_queue_depth,
            max_admin_queue_depth: opts.max_admin_queue_depth,
            max_io_queues: opts.max_io_queues,
            _pad: 0,
            in_capsule_data_size: opts.in_capsule_data_size,
            max_transfer_size: opts.max_transfer_size,
        },
    )
}

pub(crate) fn check_options(region: &Region, opts: &TargetOptions) -> Result<(), NvmfError> {
    let (sizes, ro) = region_params(opts);
    if region.options() != ro || region.slots_per_queue() < sizes.slots_per_queue {
        return Err(NvmfError::Invalid(
            "the state region was laid out for other target options".into(),
        ));
    }
    if usize::from(opts.max_io_queues) > MAX_IO_QUEUES {
        return Err(NvmfError::Invalid(format!(
            "max_io_queues {} is more than the state region tracks ({MAX_IO_QUEUES})",
            opts.max_io_queues
        )));
    }
    Ok(())
}

pub(crate) fn record_listener(region: &Region, l: &ListenerInfo) -> Result<u32, RegionError> {
    let rec = ListenerRec {
        portid: l.portid,
        trtype: l.addr.trtype,
        adrfam: l.addr.adrfam,
        traddr: Str::new("listener address", &l.addr.traddr)?,
        trsvcid: Str::new("listener service", &l.addr.trsvcid)?,
        _pad: [0; 2],
    };
    let i = region.alloc(Kind::Listener)?;
    region.write(Kind::Listener, i, &rec);
    region.bump_config_gen();
    Ok(i)
}
