//! Unit tests of the experiment definitions: validation and the status life cycle.

use super::*;

fn new(mode: Mode, arms: &[(&str, Option<&str>, Option<f64>)]) -> NewExperiment {
    NewExperiment {
        name: "exp-1".into(),
        mode,
        arms: arms
            .iter()
            .map(|(m, n, w)| NewArm { model: m.to_string(), name: n.map(str::to_string), weight: *w })
            .collect(),
        salt: None,
        default: false,
        status: None,
    }
}

#[test]
fn validation_names_what_is_wrong() {
    let models = vec!["a".to_string(), "b".to_string()];
    let ok = validate(&new(Mode::Ab, &[("a", None, Some(3.0)), ("b", None, None)]), &models).unwrap();
    assert_eq!(ok[0], Arm { name: "a".into(), model: "a".into(), weight: 3.0 });
    assert_eq!(ok[1].weight, 1.0);
    let err = |e: NewExperiment| validate(&e, &models).unwrap_err().to_string();
    assert!(err(new(Mode::Ab, &[("a", None, None)])).contains("2 to 8 arms"));
    assert!(err(new(Mode::Interleave, &[("a", None, None); 3])).contains("exactly 2"));
    assert!(err(new(Mode::Ab, &[("a", None, None), ("c", None, None)])).contains("unknown model `c`"));
    assert!(err(new(Mode::Ab, &[("a", None, None), ("a", None, None)])).contains("two arms are named"));
    assert!(err(new(Mode::Ab, &[("a", None, Some(0.0)), ("b", None, None)])).contains("positive"));
    assert!(err(new(Mode::Ab, &[("a", None, Some(f64::NAN)), ("b", None, None)])).contains("positive"));
    // A/A: the same model twice under two names.
    let aa = validate(&new(Mode::Ab, &[("a", Some("a1"), None), ("a", Some("a2"), None)]), &models).unwrap();
    assert_eq!(aa.len(), 2);
    let mut bad_name = new(Mode::Ab, &[("a", None, None), ("b", None, None)]);
    bad_name.name = "has space".into();
    assert!(err(bad_name).contains("experiment name"));
}

#[test]
fn the_life_cycle_goes_forward_only() {
    use Status::*;
    assert!(Draft.can_become(Running));
    assert!(Running.can_become(Paused) && Paused.can_become(Running));
    assert!(Running.can_become(Stopped) && Stopped.can_become(Archived));
    assert!(!Stopped.can_become(Running), "a stopped experiment stays stopped");
    assert!(!Running.can_become(Archived), "stop before archiving");
    assert!(!Archived.can_become(Draft));
}
