"""Fleet rollouts (issue 25): device labels and selectors, waves stratified by hardware class, gates on the telemetry
devices measured after activation, and the state machine the rollout-lease holder drives."""
