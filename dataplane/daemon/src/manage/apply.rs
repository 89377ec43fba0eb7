//! A configuration file applied to a target as its desired state, through the same
//! operations as the management API: block devices, subsystems, their namespaces and
//! ANA states, listeners. Errors name the key at fault.

use lightpool_nvmf::SubsystemConfig;

use super::{DeviceSpec, ManageError};
use crate::config::{ferr, BdevSection, Config, FieldError, Size};
use crate::Running;

fn at(key: String) -> impl FnOnce(ManageError) -> FieldError {
    move |e| ferr(key, e.to_string())
}

/// The name of a namespace's inline device: its kind and NSID (`ram1`), as before
/// devices had names, or with a suffix when another subsystem took it.
fn inline_name(run: &Running, b: &BdevSection, nsid: u32) -> String {
    let kind = if b.ram.is_some() {
        "ram"
    } else if b.file.is_some() {
        "file"
    } else {
        "vfio"
    };
    run.mgmt.registry.free_name(&format!("{kind}{nsid}"))
}

/// Create everything `cfg` describes on `run` (a target with nothing yet).
pub fn apply(run: &Running, cfg: &Config) -> Result<(), FieldError> {
    for (ri, r) in cfg.raids.iter().enumerate() {
        run.create_bdev(&r.name, DeviceSpec::Raid(Box::new(r.clone())))
            .map_err(at(format!("raid[{ri}]")))?;
    }
    for (bi, b) in cfg.bdevs.iter().enumerate() {
        let spec = DeviceSpec::from_section(b);
        let key = format!("bdev[{bi}].{}", spec.key());
        run.create_bdev(&b.name, spec).map_err(at(key))?;
    }
    for (pi, p) in cfg.pools.iter().enumerate() {
        let spec = crate::pools::spec(p).map_err(at(format!("pool[{pi}]")))?;
        run.create_bdev(&p.name, spec)
            .map_err(at(format!("pool[{pi}]")))?;
    }
    for (si, s) in cfg.subsystems.iter().enumerate() {
        let mut sc = SubsystemConfig::new(&s.nqn);
        sc.serial = s.serial.clone();
        sc.model = s.model.clone();
        sc.allow_any_host = s.allow_any_host;
        sc.hosts = s.hosts.clone();
        for (ki, k) in s.host_keys.iter().enumerate() {
            let keys = k.text().parse().map_err(|e| {
                crate::config::ferr(
                    format!(
                        "subsystem[{si}].host_key[{ki}].{}",
                        crate::config::keys_error_field(&e)
                    ),
                    e.to_string(),
                )
            })?;
            sc.host_keys.push((k.host.clone(), keys));
        }
        sc.min_cntlid = s.min_cntlid;
        sc.max_cntlid = s.max_cntlid;
        run.create_subsystem(sc)
            .map_err(at(format!("subsystem[{si}].nqn")))?;
        for (ki, k) in s.tls_keys.iter().enumerate() {
            run.set_tls_key(&s.nqn, &k.host, Some(&k.key))
                .map_err(at(format!("subsystem[{si}].tls_key[{ki}].key")))?;
        }
        for (ni, n) in s.namespaces.iter().enumerate() {
            let key = format!("subsystem[{si}].namespace[{ni}]");
            let device = match (n.device_name(), &n.volume) {
                (_, Some(v)) => {
                    crate::pools::volume_device(run, v).map_err(at(format!("{key}.volume")))?
                }
                (Some(name), None) => name.clone(),
                (None, None) => {
                    let inline = n.inline_bdev();
                    let spec = DeviceSpec::from_section(&inline);
                    let name = inline_name(run, &inline, n.nsid);
                    run.create_bdev(&name, spec.clone())
                        .map_err(at(format!("{key}.{}", spec.key())))?;
                    if n.passthru {
                        let p = run.mgmt.registry.free_name(&format!("passthru:{name}"));
                        run.create_bdev(&p, DeviceSpec::Passthru { base: name })
                            .map_err(at(format!("{key}.passthru")))?;
                        p
                    } else {
                        name
                    }
                }
            };
            let size_key = if n.size.is_some() { "size" } else { "nsid" };
            run.add_namespace(
                &s.nqn,
                n.nsid,
                &device,
                Config::nguid(n),
                Config::uuid(n),
                n.ana_group,
                n.size.map(|Size(b)| b),
            )
            .map_err(at(format!("{key}.{size_key}")))?;
        }
        for (ai, a) in s.ana_groups.iter().enumerate() {
            let code = crate::control::ana_state_code(&a.state).ok_or_else(|| {
                ferr(
                    format!("subsystem[{si}].ana_group[{ai}].state"),
                    "unknown ANA state",
                )
            })?;
            run.set_ana(&s.nqn, a.group, code)
                .map_err(at(format!("subsystem[{si}].ana_group[{ai}].group")))?;
        }
    }
    for (li, l) in cfg.listeners.iter().enumerate() {
        let secure = lightpool_nvmf::tls::Secure::parse(&l.secure).ok_or_else(|| {
            ferr(
                format!("listener[{li}].secure"),
                format!("{:?} is not none, optional or required", l.secure),
            )
        })?;
        let ktls = lightpool_nvmf::tls::Ktls::parse(&l.ktls).ok_or_else(|| {
            ferr(
                format!("listener[{li}].ktls"),
                format!("{:?} is not auto or off", l.ktls),
            )
        })?;
        if l.engine.is_empty() || l.engine == "kernel" {
            run.add_secure_listener(&l.transport, &l.address, secure, ktls)
                .map_err(at(format!("listener[{li}].address")))?;
        } else {
            if secure != lightpool_nvmf::tls::Secure::None {
                return Err(ferr(
                    format!("listener[{li}].secure"),
                    format!("engine {:?} serves plain NVMe/TCP only", l.engine),
                ));
            }
            if l.interface.is_empty() {
                return Err(ferr(
                    format!("listener[{li}].interface"),
                    format!("engine {:?} needs the interface it takes over", l.engine),
                ));
            }
            let engine = lightpool_nvmf::EngineSpec {
                engine: l.engine.clone(),
                interface: l.interface.clone(),
                mode: l.xdp_mode.clone(),
            };
            run.add_engine_listener(&l.transport, &l.address, &engine)
                .map_err(at(format!("listener[{li}].engine")))?;
        }
    }
    Ok(())
}
