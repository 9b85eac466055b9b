//! Every transition, driven without a process.

use super::*;
use crate::outbox::Outbox;

fn config(instances: usize) -> AppConfig {
    AppConfig {
        instances,
        ..AppConfig::default()
    }
}

fn proc(config: &AppConfig, slot: usize, generation: u64) -> Box<Proc> {
    Box::new(Proc::new(
        config,
        slot,
        1000 + generation as u32,
        generation,
        generation as u16,
        Outbox::new(16),
        None,
    ))
}

/// Feeds `Event::Started` for a new process `generation` of `slot` in `role`.
fn start(state: &mut State, slot: usize, role: Role, generation: u64) -> Vec<Action> {
    let proc = proc(&state.config, slot, generation);
    state.apply(Event::Started { slot, role, proc })
}

/// A state whose slots each run a ready current process (generations 1, 2, ...).
fn running(instances: usize) -> State {
    let mut state = State::new(config(instances), None);
    for slot in 0..instances {
        let generation = slot as u64 + 1;
        start(&mut state, slot, Role::Current, generation);
        state.apply(Event::Ready {
            generation,
            via_ipc: true,
        });
    }
    state
}

fn exited(generation: u64, code: Option<i32>) -> Event {
    Event::Exited {
        generation,
        code,
        signal: None,
        description: "exited with code 1".into(),
        at: Instant::now(),
    }
}

fn starts(actions: &[Action]) -> Vec<(usize, Role)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { slot, role } => Some((*slot, *role)),
            _ => None,
        })
        .collect()
}

fn kills(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Kill { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect()
}

#[test]
fn a_started_process_is_launching_until_it_is_ready_then_online() {
    let mut state = State::new(config(1), None);
    start(&mut state, 0, Role::Current, 1);
    assert_eq!(state.slots[0].status, Status::Launching);
    let actions = state.apply(Event::Ready {
        generation: 1,
        via_ipc: true,
    });
    assert_eq!(state.slots[0].status, Status::Online);
    assert!(state.proc(1).is_some_and(|p| p.ready && p.speaks_ipc));
    assert!(matches!(&actions[..], [Action::Log(log)] if log.message == "worker online"));
    // Saying it twice changes nothing.
    assert!(state
        .apply(Event::Ready {
            generation: 1,
            via_ipc: true
        })
        .is_empty());
}

#[test]
fn a_crash_forgets_the_process_and_restarts_the_slot_at_once_the_first_time() {
    let mut state = running(2);
    let actions = state.apply(exited(1, Some(1)));
    assert!(state.slots[0].current.is_none());
    assert_eq!(state.slots[0].status, Status::WaitingRestart);
    assert_eq!(state.slots[0].restarts, 1);
    assert_eq!(actions[0], Action::Forget { generation: 1 });
    assert!(actions.contains(&Action::RestartAfter {
        slot: 0,
        delay: Duration::ZERO
    }));
    assert!(actions.iter().any(|a| matches!(a,
        Action::Log(log) if log.level == Level::Warn && log.worker == Some(0))));
    // The delay over, the slot gets a process again.
    let due = state.apply(Event::RestartDue { slot: 0 });
    assert_eq!(starts(&due), vec![(0, Role::Current)]);
    // The other slot is untouched.
    assert_eq!(state.slots[1].status, Status::Online);
}

#[test]
fn repeated_crashes_back_off_and_a_crash_loop_is_errored() {
    let mut state = running(1);
    state.config.restart.first_restart_at_once = false;
    let mut delays = Vec::new();
    for generation in 1..=state.config.restart.max_fast_exits as u64 + 1 {
        if generation > 1 {
            start(&mut state, 0, Role::Current, generation);
        }
        for action in state.apply(exited(generation, Some(1))) {
            if let Action::RestartAfter { delay, .. } = action {
                delays.push(delay);
            }
        }
    }
    assert!(
        delays.windows(2).all(|pair| pair[0] <= pair[1]),
        "{delays:?}"
    );
    assert_eq!(state.slots[0].status, Status::Errored);
    assert_eq!(delays.last(), Some(&state.config.restart.max_delay));
}

#[test]
fn a_stop_exit_code_leaves_the_slot_stopped() {
    let mut state = running(1);
    state.config.restart.stop_exit_codes = vec![3];
    let actions = state.apply(exited(1, Some(3)));
    assert_eq!(state.slots[0].status, Status::Stopped);
    assert!(starts(&actions).is_empty());
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { .. })));
    // Nor does a late restart timer revive it.
    assert!(state.apply(Event::RestartDue { slot: 0 }).is_empty());
}

#[test]
fn a_failed_start_is_an_exit_of_the_slot_and_a_failed_incoming_is_nothing() {
    let mut state = State::new(config(1), None);
    let actions = state.apply(Event::StartFailed {
        slot: 0,
        role: Role::Current,
        error: "cannot exec".into(),
    });
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { slot: 0, .. })));
    assert_eq!(state.slots[0].last_error.as_deref(), Some("cannot exec"));
    let actions = state.apply(Event::StartFailed {
        slot: 0,
        role: Role::Incoming,
        error: "cannot exec".into(),
    });
    assert!(actions.iter().all(|a| matches!(a, Action::Log(_))));
}

#[test]
fn a_ready_spare_takes_the_place_of_a_crashed_worker_and_another_spare_starts() {
    let mut state = running(1);
    state.config.spare = 1;
    start(&mut state, 1, Role::Spare, 7);
    state.apply(Event::Ready {
        generation: 7,
        via_ipc: true,
    });
    let actions = state.apply(exited(1, Some(1)));
    assert!(state.slots[0]
        .current
        .as_ref()
        .is_some_and(|p| p.generation == 7));
    assert_eq!(state.slots[0].status, Status::Online);
    assert!(state.spares.is_empty());
    assert_eq!(starts(&actions), vec![(1, Role::Spare)]);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { .. })));
}

#[test]
fn a_failing_spare_is_started_again_after_a_delay_and_an_old_one_is_not() {
    let mut state = running(1);
    state.config.spare = 1;
    start(&mut state, 1, Role::Spare, 7);
    let actions = state.apply(exited(7, Some(1)));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::SparesAfter { .. })));
    assert_eq!(
        starts(&state.apply(Event::SparesDue)),
        vec![(1, Role::Spare)]
    );

    start(&mut state, 1, Role::Spare, 8);
    state.epoch += 1;
    let actions = state.apply(exited(8, Some(1)));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::SparesAfter { .. })));
}

#[test]
fn a_worker_is_killed_after_max_misses_probes_in_a_row_and_a_pong_resets_the_count() {
    let mut state = running(1);
    let max = state.config.health.max_misses;
    for _ in 1..max {
        assert!(kills(&state.apply(Event::Probed {
            generation: 1,
            healthy: false
        }))
        .is_empty());
    }
    state.apply(Event::Probed {
        generation: 1,
        healthy: true,
    });
    for _ in 1..max {
        state.apply(Event::Probed {
            generation: 1,
            healthy: false,
        });
    }
    let actions = state.apply(Event::Probed {
        generation: 1,
        healthy: false,
    });
    assert_eq!(kills(&actions), vec![1]);
}

#[test]
fn a_worker_not_ready_in_time_is_killed_and_a_ready_one_is_not() {
    let mut state = running(1);
    assert!(state
        .apply(Event::ReadyTimedOut { generation: 1 })
        .is_empty());
    start(&mut state, 0, Role::Incoming, 5);
    assert_eq!(
        kills(&state.apply(Event::ReadyTimedOut { generation: 5 })),
        vec![5]
    );
}

#[test]
fn memory_above_the_limit_replaces_the_worker_unless_a_replacement_is_under_way() {
    let mut state = running(1);
    let actions = state.apply(Event::MemoryExceeded {
        slot: 0,
        memory: 1 << 30,
    });
    assert!(actions.contains(&Action::Replace { slot: 0 }));
    state.slots[0].replacing = true;
    assert!(state
        .apply(Event::MemoryExceeded {
            slot: 0,
            memory: 1 << 30
        })
        .is_empty());
}

#[test]
fn a_drained_process_leaves_without_restarting_its_slot_and_a_late_one_is_killed() {
    let mut state = running(1);
    let old = state.slots[0].current.take();
    state.slots[0].draining.extend(old);
    start(&mut state, 0, Role::Current, 9);
    let timeout = Duration::from_secs(1);
    assert_eq!(
        kills(&state.apply(Event::DrainTimedOut {
            generation: 1,
            timeout
        })),
        vec![1]
    );
    let actions = state.apply(exited(1, Some(0)));
    assert!(state.slots[0].draining.is_empty());
    assert!(starts(&actions).is_empty());
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { .. })));
    assert_eq!(state.slots[0].restarts, 0);
}

#[test]
fn scaling_down_drains_the_retired_slots_and_up_starts_new_ones_without_restarts() {
    let mut state = running(3);
    let actions = state.apply(Event::Scaled { instances: 1 });
    let drained: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect();
    assert_eq!(drained, vec![2, 3]);
    assert!(state.slots[1].retired && state.slots[2].retired);
    let actions = state.apply(exited(2, Some(0)));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { .. })));
    state.apply(exited(3, Some(0)));
    let actions = state.apply(Event::Scaled { instances: 4 });
    assert_eq!(
        starts(&actions),
        vec![(1, Role::Current), (2, Role::Current), (3, Role::Current)]
    );
    assert_eq!(state.slots.len(), 4);
    assert!(state.slots.iter().all(|s| !s.retired));
}

#[test]
fn scaling_down_hands_the_retired_workers_sessions_to_the_least_loaded_that_stays() {
    let mut state = running(3);
    for (slot, connections) in [(0, 50), (1, 10), (2, 30)] {
        let proc = state.slots[slot].current.as_mut().unwrap();
        proc.speaks_ipc = true;
        proc.connections = connections;
    }
    let retired = state.slots[2].current.as_ref().unwrap().worker_id;
    let actions = state.apply(Event::Scaled { instances: 2 });
    let adopter = state.slots[1].current.as_ref().unwrap();
    assert!(matches!(
        &actions[..],
        [Action::Drain { generation: 3, hand_off_to: Some(id), .. }] if *id == adopter.worker_id
    ));
    assert_eq!(adopter.adopted_ids, vec![retired]);
    assert!(state.slots[2].current.as_ref().unwrap().handing_off);
    // Down to one: nobody stays to adopt from a worker that does not speak IPC.
    state.slots[1].current.as_mut().unwrap().speaks_ipc = false;
    let actions = state.apply(Event::Scaled { instances: 1 });
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Drain {
            generation: 2,
            hand_off_to: None,
            ..
        }
    )));
}

#[test]
fn a_stop_drains_every_process_and_their_exits_restart_nothing() {
    let mut state = running(2);
    let actions = state.apply(Event::StopRequested);
    let drained: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain { generation, .. } => Some(*generation),
            _ => None,
        })
        .collect();
    assert_eq!(drained, vec![1, 2]);
    assert!(state.slots.iter().all(|s| s.status == Status::Stopping));
    let actions = state.apply(exited(1, Some(0)));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { .. } | Action::Start { .. })));
    assert_eq!(state.slots[0].status, Status::Stopped);
    assert_eq!(kills(&state.apply(Event::StopTimedOut)), vec![2]);
    state.apply(exited(2, None));
    assert!(state.all_gone());
    state.apply(Event::Stopped);
    assert!(state.slots.iter().all(|s| s.status == Status::Stopped));
    assert_eq!(state.phase, Phase::Stopping);
    state.apply(Event::Finished);
    assert_eq!(state.phase, Phase::Finished);
}

#[test]
fn after_an_upgrade_the_workers_hand_their_sessions_to_the_new_masters_in_turn() {
    let mut state = running(3);
    for slot in &mut state.slots {
        slot.current.as_mut().unwrap().speaks_ipc = true;
    }
    // One worker cannot move its sessions: it drains.
    state.slots[2].current.as_mut().unwrap().speaks_ipc = false;
    let adopter = |id| crate::adoption::Adopter {
        address: format!("new-{id}"),
        master_pid: 42,
        polling: false,
    };
    let actions = state.apply(Event::HandOverRequested {
        adopters: vec![adopter(7), adopter(8)],
    });
    let ends: Vec<(u64, Option<String>)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::HandOver { generation, to, .. } => {
                Some((*generation, Some(to.address.clone())))
            }
            Action::Drain { generation, .. } => Some((*generation, None)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ends,
        vec![
            (1, Some("new-7".into())),
            (2, Some("new-8".into())),
            (3, None)
        ]
    );
    assert_eq!(state.phase, Phase::Stopping);
    // A program other than the chat cannot move sessions: every worker drains.
    let mut state = running(1);
    state.config.command = vec!["./api".into()];
    state.slots[0].current.as_mut().unwrap().speaks_ipc = true;
    let actions = state.apply(Event::HandOverRequested {
        adopters: vec![adopter(7)],
    });
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Drain { generation: 1, .. })));
    assert!(!actions.iter().any(|a| matches!(a, Action::HandOver { .. })));
}

#[test]
fn a_replacement_swaps_in_a_ready_process_and_drains_the_old_one() {
    let mut state = running(1);
    let actions = state.begin_replace(0).expect("a replacement begins");
    assert_eq!(starts(&actions), vec![(0, Role::Incoming)]);
    assert!(
        state.begin_replace(0).is_none(),
        "one replacement at a time"
    );
    start(&mut state, 0, Role::Incoming, 5);
    state.apply(Event::Ready {
        generation: 5,
        via_ipc: true,
    });
    let (swapped, actions) = state.finish_replace(0, 5);
    assert_eq!(
        swapped,
        Ok(Swapped {
            new_pid: 1005,
            old: Some((1001, 1))
        })
    );
    assert!(matches!(
        &actions[..],
        [Action::Drain { generation: 1, .. }]
    ));
    assert!(state.slots[0]
        .current
        .as_ref()
        .is_some_and(|p| p.generation == 5));
    assert!(!state.slots[0].replacing);
    // The old one's exit restarts nothing.
    let actions = state.apply(exited(1, Some(0)));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { .. })));
}

/// Replaces slot 0's process, which speaks IPC, by a new one of `generation` that got ready.
fn replaced_by(state: &mut State, generation: u64) -> Vec<Action> {
    state.slots[0].current.as_mut().unwrap().speaks_ipc = true;
    state.begin_replace(0);
    start(state, 0, Role::Incoming, generation);
    state.apply(Event::Ready {
        generation,
        via_ipc: true,
    });
    let (swapped, actions) = state.finish_replace(0, generation);
    assert!(swapped.is_ok());
    actions
}

#[test]
fn a_replaced_worker_that_speaks_ipc_hands_its_sessions_to_its_replacement() {
    let mut state = running(1);
    let old_id = state.slots[0].current.as_ref().unwrap().worker_id;
    let actions = replaced_by(&mut state, 5);
    let new = state.slots[0].current.as_ref().unwrap();
    assert!(matches!(
        &actions[..],
        [Action::Drain { generation: 1, hand_off_to: Some(id), .. }] if *id == new.worker_id
    ));
    assert_eq!(new.adopted_ids, vec![old_id]);
    // Replaced again: the next one answers for both earlier ids.
    let second_id = new.worker_id;
    replaced_by(&mut state, 9);
    let newest = state.slots[0].current.as_ref().unwrap();
    assert_eq!(newest.adopted_ids, vec![second_id, old_id]);
}

#[test]
fn a_program_other_than_the_chat_drains_without_a_hand_off() {
    let mut state = running(1);
    state.config.command = vec!["./api".into()];
    let actions = replaced_by(&mut state, 5);
    assert!(matches!(
        &actions[..],
        [Action::Drain {
            generation: 1,
            hand_off_to: None,
            ..
        }]
    ));
}

#[test]
fn a_replacement_that_never_gets_ready_is_killed_and_the_old_process_keeps_serving() {
    let mut state = running(1);
    state.begin_replace(0);
    start(&mut state, 0, Role::Incoming, 5);
    let (swapped, actions) = state.finish_replace(0, 5);
    assert!(swapped.is_err());
    assert_eq!(kills(&actions), vec![5]);
    assert!(state.slots[0]
        .current
        .as_ref()
        .is_some_and(|p| p.generation == 1));
    assert_eq!(state.slots[0].status, Status::Online);
}

#[test]
fn a_replacement_takes_a_ready_spare_first_and_a_new_spare_starts() {
    let mut state = running(1);
    state.config.spare = 1;
    for generation in [7, 8] {
        start(&mut state, 1, Role::Spare, generation);
    }
    state.apply(Event::Ready {
        generation: 8,
        via_ipc: true,
    });
    let actions = state.begin_replace(0).expect("a replacement begins");
    assert!(state.slots[0]
        .incoming
        .as_ref()
        .is_some_and(|p| p.generation == 8));
    // One spare of the epoch is left, as many as wanted: none starts.
    assert!(starts(&actions).is_empty());
}

#[test]
fn a_restart_drains_the_slot_then_starts_it_again_with_a_fresh_backoff() {
    let mut state = running(1);
    let timeout = Duration::from_secs(2);
    let (old, actions) = state.stop_for_restart(0, timeout);
    assert_eq!(old, Some(1));
    assert_eq!(
        actions,
        vec![Action::Drain {
            generation: 1,
            timeout,
            hand_off_to: None,
        }]
    );
    // Its exit is expected: no restart of its own.
    let exit = state.apply(exited(1, None));
    assert!(!exit
        .iter()
        .any(|a| matches!(a, Action::RestartAfter { .. })));
    let actions = state.relaunch(0);
    assert_eq!(starts(&actions), vec![(0, Role::Current)]);
    assert_eq!(state.slots[0].status, Status::Launching);
    assert_eq!(state.slots[0].restarts, 1);
}

#[test]
fn a_reload_drains_the_old_spares_kills_them_later_and_starts_new_ones() {
    let mut state = running(1);
    state.config.spare = 1;
    start(&mut state, 1, Role::Spare, 7);
    let actions = state.renew_spares();
    assert_eq!(state.epoch, 1);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Drain { generation: 7, .. })));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::KillAfter { generation: 7, .. })));
    assert_eq!(starts(&actions), vec![(1, Role::Spare)]);
}

fn hooks(actions: &[Action]) -> Vec<&crate::hooks::Occurrence> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Hook(occurrence) => Some(occurrence),
            _ => None,
        })
        .collect()
}

#[test]
fn an_unasked_exit_raises_a_crash_hook_and_an_asked_one_does_not() {
    use crate::hooks::HookEvent;
    let mut state = running(2);
    let actions = state.apply(Event::Exited {
        generation: 1,
        code: None,
        signal: Some(9),
        description: "was killed by signal 9".into(),
        at: Instant::now(),
    });
    let raised = hooks(&actions);
    assert_eq!(raised.len(), 1, "{actions:?}");
    assert_eq!(raised[0].event, HookEvent::Crash);
    assert_eq!(
        (raised[0].worker, raised[0].pid, raised[0].exit_signal),
        (Some(0), Some(1001), Some(9))
    );
    // A stop's exits are no crash.
    state.apply(Event::StopRequested);
    assert!(hooks(&state.apply(exited(2, Some(0)))).is_empty());
}

#[test]
fn a_hung_worker_raises_one_health_hook_and_no_crash_hook() {
    use crate::hooks::HookEvent;
    let mut state = running(1);
    let max = state.config.health.max_misses;
    let mut raised = Vec::new();
    for _ in 0..max + 2 {
        let actions = state.apply(Event::Probed {
            generation: 1,
            healthy: false,
        });
        raised.extend(hooks(&actions).into_iter().map(|o| o.event));
    }
    assert_eq!(raised, vec![HookEvent::HealthFailure]);
    assert!(hooks(&state.apply(exited(1, None))).is_empty());
}

#[test]
fn a_crash_loop_raises_the_errored_hook_once_and_memory_its_own() {
    use crate::hooks::HookEvent;
    let mut state = running(1);
    let mut errored = 0;
    for generation in 1..=state.config.restart.max_fast_exits as u64 + 3 {
        if generation > 1 {
            start(&mut state, 0, Role::Current, generation);
        }
        let actions = state.apply(exited(generation, Some(1)));
        errored += hooks(&actions)
            .iter()
            .filter(|o| o.event == HookEvent::Errored)
            .count();
    }
    assert_eq!(state.slots[0].status, Status::Errored);
    assert_eq!(errored, 1);

    let mut state = running(1);
    let actions = state.apply(Event::MemoryExceeded {
        slot: 0,
        memory: 1 << 30,
    });
    let raised = hooks(&actions);
    assert_eq!(raised.len(), 1);
    assert_eq!(
        (raised[0].event, raised[0].pid),
        (HookEvent::MemoryRestart, Some(1001))
    );
}
