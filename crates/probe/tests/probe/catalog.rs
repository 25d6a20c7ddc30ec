//! The catalog and the probes agree: a type the catalog calls tested has a probe, and
//! every probe kind the engine implements is named by some type, and no type is untested.

use patchbay_catalog::Catalog;
use patchbay_core::schema::Verification;
use patchbay_probe::IMPLEMENTED_KINDS;

#[test]
fn every_type_is_verified_or_contract_tested_with_an_implemented_probe() {
    let mut untested = vec![];
    for ty in Catalog::builtin().types() {
        let implemented = IMPLEMENTED_KINDS.contains(&ty.probe.kind.as_str());
        match ty.verification {
            Verification::Verified | Verification::Contract => assert!(
                implemented,
                "{} is marked {} but its probe kind `{}` is not implemented",
                ty.id,
                ty.verification.as_str(),
                ty.probe.kind
            ),
            Verification::Untested => untested.push(ty.id.as_str()),
        }
    }
    for kind in IMPLEMENTED_KINDS {
        assert!(
            Catalog::builtin()
                .types()
                .iter()
                .any(|t| t.probe.kind == *kind),
            "probe kind {kind} is implemented but no type names it"
        );
    }
    // Issue 6: every catalog type has a probe, verified or contract-tested.
    assert!(
        untested.is_empty(),
        "types whose probe is untested (every type needs a probe): {untested:?}"
    );
}
