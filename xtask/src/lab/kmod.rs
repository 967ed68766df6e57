//! Kernel module dependencies from `modules.dep` (as written by `depmod`).

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// `modules.dep`: module path (relative to `/lib/modules/<release>`) → the paths
/// of the modules it depends on.
pub struct ModulesDep {
    deps: BTreeMap<String, Vec<String>>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> Result<Self> {
        let mut deps = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((module, rest)) = line.split_once(':') else {
                bail!("modules.dep line {}: no `:` in {line:?}", n + 1);
            };
            let list = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(module.trim().to_string(), list);
        }
        Ok(ModulesDep { deps })
    }

    /// The path of a module by name (`virtio_net`; `-` and `_` are the same, as
    /// for modprobe).
    pub fn path_of(&self, name: &str) -> Option<&str> {
        let want = normalize(name);
        self.deps
            .keys()
            .find(|path| module_name(path) == want)
            .map(String::as_str)
    }

    /// The modules to load for `names`, dependencies first, each once.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        for name in names {
            let Some(path) = self.path_of(name) else {
                bail!("kernel module {name} is not in modules.dep (built in, or not built?)");
            };
            self.visit(path, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    fn visit(&self, path: &str, order: &mut Vec<String>, stack: &mut Vec<String>) -> Result<()> {
        if order.iter().any(|p| p == path) {
            return Ok(());
        }
        if stack.iter().any(|p| p == path) {
            bail!("dependency cycle through {path}");
        }
        let Some(deps) = self.deps.get(path) else {
            bail!("modules.dep names {path} as a dependency but has no line for it");
        };
        stack.push(path.to_string());
        for dep in deps {
            self.visit(dep, order, stack)?;
        }
        stack.pop();
        order.push(path.to_string());
        Ok(())
    }
}

/// `kernel/drivers/net/virtio_net.ko(.xz)` → `virtio_net`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/crypto/crc32c-generic.ko:
";

    fn pos(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == name)
            .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    }

    #[test]
    fn dependencies_first_each_once() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let order = dep
            .load_order(&["virtio_pci", "virtio_net", "ext4", "crc32c-generic"])
            .unwrap();
        assert_eq!(order.len(), 13);
        assert!(pos(&order, "virtio") < pos(&order, "virtio_pci"));
        assert!(pos(&order, "virtio_ring") < pos(&order, "virtio_pci"));
        assert!(pos(&order, "failover") < pos(&order, "net_failover"));
        assert!(pos(&order, "net_failover") < pos(&order, "virtio_net"));
        assert!(pos(&order, "jbd2") < pos(&order, "ext4"));
        assert_eq!(
            order.iter().filter(|p| p.ends_with("/virtio.ko")).count(),
            1
        );
        assert_eq!(
            dep.path_of("crc32c_generic"),
            Some("kernel/crypto/crc32c-generic.ko")
        );
    }

    #[test]
    fn errors() {
        let dep = ModulesDep::parse(DEP).unwrap();
        assert!(dep.load_order(&["nope"]).is_err());
        let cyc = ModulesDep::parse("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        assert!(format!("{:#}", cyc.load_order(&["a"]).unwrap_err()).contains("cycle"));
        let dangling = ModulesDep::parse("a.ko: b.ko\n").unwrap();
        assert!(dangling.load_order(&["a"]).is_err());
        assert!(ModulesDep::parse("no colon here\n").is_err());
    }
}
