"""Bugs planted by hand, one at a time, each with the tests that must catch it (issue 32:
a test counts once it has failed). `python -m tests.mutations [NAME...]` plants each break
in its file, runs its tests, puts the file back and says CAUGHT or MISSED; `--list` shows
them. Not part of `make test` (each break reruns its tests: about 20 minutes for all).
A break whose code moved is reported STALE: update its `old` text here."""
T_PRE = "tests/test_preemption.py"
BREAKS = {
  "preempted-is-an-Exception": dict(file="dlcore/preemption.py",
      old="class Preempted(BaseException):", new="class Preempted(Exception):",
      tests=[T_PRE + "::test_a_signal_while_tfds_reads_stops_the_load_instead_of_falling_back"]),
  "preempted-is-an-Exception-model-folder": dict(file="dlcore/preemption.py",
      old="class Preempted(BaseException):", new="class Preempted(Exception):",
      tests=[T_PRE + "::test_a_signal_while_a_model_folder_loads_is_a_stop_not_a_damaged_folder"]),
  "fit-keeps-a-stale-request": dict(file="dlcore/preemption.py",
      old="  if _program:\n    raise Preempted(_requested)\n  reset()\n",
      new="  if _program:\n    raise Preempted(_requested)\n",
      tests=[T_PRE + "::test_a_stop_does_not_outlive_its_run"]),
  "no-checkpointer-message": dict(file="dlcore/train/loop.py",
      old='raise preemption.Preempted(signal_name, step, where, what=f"\'{desc}\'")',
      new='raise preemption.Preempted(signal_name, step, str(where))',
      tests=[T_PRE + "::test_a_fit_without_checkpoints_says_nothing_was_saved"]),
  "no-stop-after-last-evaluation": dict(file="dlcore/train/loop.py",
      old="    if (signal_name := preemption.stopping()) is not None:",
      new="    if (signal_name := preemption.stopping()) is not None and False:",
      tests=[T_PRE + "::test_a_signal_in_the_last_evaluation_stops_after_saving"]),
  "entry-keeps-its-handlers": dict(file="dlcore/harness/cli.py",
      old="    preemption.uninstall(previous)\n", new="    pass\n",
      tests=[T_PRE + "::test_entry_puts_the_handlers_back_and_forgets_the_request"]),
  "manifest-not-required": dict(file="dlcore/checkpoint.py",
      old='''    return ("incomplete: the save was cut short before its manifest was written"
            if manifest_required else None)''', new="    return None",
      tests=["tests/test_faults.py::test_a_step_without_its_manifest_is_incomplete"]),
  "a-stop-in-a-held-write-is-raised-at-once": dict(file="dlcore/preemption.py",
      old="    if _held:  # an all-or-nothing write", new="    if False:  # an all-or-nothing write",
      tests=[T_PRE + "::test_a_stop_while_a_model_folder_is_written_waits_for_the_whole_folder",
             T_PRE + "::test_a_stop_as_a_temporary_file_is_made_or_renamed_leaves_none",
             T_PRE + "::test_held_raises_only_a_stop_that_arrived_inside"]),
  "held-forgets-its-stop": dict(file="dlcore/preemption.py",
      old="    if _requested is not None and not _training and not _delivered:\n      raise _stop_now()",
      new="    pass",
      tests=[T_PRE + "::test_held_raises_only_a_stop_that_arrived_inside"]),
  "held-raises-a-stale-request": dict(file="dlcore/preemption.py",
      old="    if _held or not _held_stop:\n      return False",
      new="    if _held:\n      return False",
      tests=[T_PRE + "::test_held_raises_only_a_stop_that_arrived_inside"]),
  "held-replaces-the-stop-on-its-way": dict(file="dlcore/preemption.py",
      old="    if isinstance(sys.exc_info()[1], stops):  # a cleanup while a stop is on its way",
      new="    if False:",
      tests=[T_PRE + "::test_a_cleanup_under_held_lets_the_stop_on_its_way_go_on"]),
  "held-in-any-thread": dict(file="dlcore/preemption.py",
      old="    self.counted = threading.current_thread() is threading.main_thread()",
      new="    self.counted = True",
      tests=[T_PRE + "::test_held_in_another_thread_does_not_hold_the_main_threads_stop"]),
  "replacing-makes-its-file-unheld": dict(file="dlcore/files.py",
      old="    with preemption.held():\n      fd, tmp = tempfile.mkstemp(",
      new="    if True:\n      fd, tmp = tempfile.mkstemp(",
      tests=[T_PRE + "::test_a_stop_as_a_temporary_file_is_made_or_renamed_leaves_none"]),
  "damaged-step-not-set-aside": dict(file="dlcore/checkpoint.py",
      old="          if step is None:\n            self._set_aside(s)\n", new="",
      tests=["tests/test_faults.py::test_a_damaged_newest_checkpoint_is_reported_and_skipped"]),
  "serving-export-fixed-batch": dict(file="dlcore/interop/serving.py",
      old='batch = export.symbolic_shape("b") if batched else ()',
      new='batch = (2,) if batched else ()',
      tests=["tests/test_export.py::test_a_serving_export_runs_in_a_fresh_process_on_another_batch_size"]),
  "track-sends-steps-twice": dict(file="dlcore/harness/track.py",
      old="        if p.step > self.sent.get((child, p.key), -1):",
      new="        if True:",
      tests=["tests/test_track.py::test_sigterm_and_auto_resume_continue_one_mlflow_run_with_each_epoch_once",
             "tests/test_track.py::test_a_server_that_is_down_costs_one_line_and_sync_sends_the_run"]),
  "track-new-run-on-resume": dict(file="dlcore/harness/track.py",
      old='      point = r.data.tags.get("dlcore.point")\n      if point is None:',
      new='      point = r.data.tags.get("dlcore.point")\n      if False:',
      tests=["tests/test_track.py::test_sigterm_and_auto_resume_continue_one_mlflow_run_with_each_epoch_once"]),
  "track-std-ddof-0": dict(file="dlcore/harness/track.py",
      old="  return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))",
      new="  return math.sqrt(sum((v - mean) ** 2 for v in values) / n)",
      tests=["tests/test_track.py::test_seeds_and_a_sweep_give_a_parent_and_a_child_run_per_point"]),
  "track-members-seed-offset": dict(file="dlcore/harness/track.py",
      old="          out += [(label, Point(f\"{key}/seed_{self.seed + i}\", step, x, t))",
      new="          out += [(label, Point(f\"{key}/seed_{i}\", step, x, t))",
      tests=["tests/test_track.py::test_seeds_and_a_sweep_give_a_parent_and_a_child_run_per_point"]),
  "track-failure-stops-the-run": dict(file="dlcore/harness/track.py",
      old="    except Exception as e:  # noqa: BLE001 - a tracker never stops a run",
      new="    except ImportError as e:  # noqa: BLE001 - a tracker never stops a run",
      tests=["tests/test_track.py::test_a_server_that_is_down_costs_one_line_and_sync_sends_the_run"]),
  "track-close-does-not-wait": dict(file="dlcore/harness/writers.py",
      old="        w.join(deadline - time.monotonic())",
      new="        pass",
      tests=["tests/test_track.py::test_a_tracked_run_is_one_mlflow_run_equal_to_its_folder"]),
  "track-tensorboard-flag-ignored": dict(file="dlcore/harness/rundir.py",
      old='    track = tuple(track) + (("tensorboard",) if tensorboard else ())',
      new='    track = tuple(track)',
      tests=["tests/test_experiments.py::test_tensorboard_logs_are_written"]),
  "track-missing-not-checked": dict(file="dlcore/harness/cli.py",
      old="      if (why := track.missing(common.track)) is not None:",
      new="      if (why := track.missing(common.track)) is not None and False:",
      tests=["tests/test_track.py::test_track_without_the_package_stops_before_any_work"]),
  "track-wandb-no-step": dict(file="dlcore/harness/track.py",
      old='      run.log({"step": step, **{p.key: p.value for p in group}})',
      new='      run.log({p.key: p.value for p in group})',
      tests=["tests/test_track.py::test_wandb_offline_holds_every_metric_row"]),
}
T_MEM = "tests/test_members.py"
BREAKS.update({
  "members-share-the-first-data-order": dict(file="dlcore/train/members.py",
      old="shuffle=shuffle, seed=s, epoch=epoch,", new="shuffle=shuffle, seed=seeds[0], epoch=epoch,",
      tests=[T_MEM, "-m", "not slow"]),
  "members-share-the-first-init": dict(file="dlcore/train/members.py",
      old="  states = [create_train_state(model, tx, example_x, s, init_args, loss_scale) for s in seeds]",
      new="  states = [create_train_state(model, tx, example_x, seeds[0], init_args, loss_scale) for s in seeds]",
      tests=[T_MEM, "-m", "not slow"]),
  "members-eval-seed-of-the-first": dict(file="dlcore/harness/seeds.py",
      old="return self.seeds[0] + offset if not self.many else [s + offset for s in self.seeds]",
      new="return self.seeds[0] + offset if not self.many else [self.seeds[0] + offset for s in self.seeds]",
      tests=[T_MEM + "::test_vae_members_equal_single_runs"]),
  "summary-std-population": dict(file="dlcore/harness/seeds.py",
      old="np.std(vals, ddof=1)", new="np.std(vals, ddof=0)", tests=[T_MEM, "-m", "not slow"]),
  "float16-counted-means-unweighted": dict(file="dlcore/train/loop.py",
      old='    per_step = [k for k in ("skipped", "loss_scale") if k in rows[0]]',
      new='    per_step = []', tests=["tests/test_precision.py"]),
  "float16-summary-skipped-zero": dict(file="dlcore/harness/cli.py",
      old='return {} if skipped is None else {"skipped_steps": skipped}',
      new='return {} if skipped is None else {"skipped_steps": 0}',
      tests=["tests/test_precision.py"]),
  "cifar-extract-in-place": dict(file="dlcore/data/images.py",
      old='        tar.extractall(tmp, filter="data")', new='        tar.extractall(dest, filter="data")',
      tests=["tests/test_data.py"]),
  "cifar-no-record-check": dict(file="dlcore/data/images.py",
      old="      if raw.size == 0 or raw.size % CIFAR_RECORD:", new="      if False:",
      tests=["tests/test_data.py"]),
})
T_PREC = "tests/test_precision.py"
BREAKS.update({
  "tagger-log-softmax-back-to-bf16": dict(file="dlcore/models/rnn.py",
      old="    return nn.log_softmax(logits.astype(jnp.float32), axis=-1)\n",
      new="    return nn.log_softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)\n",
      tests=[T_PREC + "::test_the_tagger_gives_float32_log_probabilities_in_bfloat16"]),
  "lenet-conv1-without-dtype": dict(file="dlcore/models/cnn.py",
      old="    self.conv1 = Conv2d(self.in_channels, 6, 5, **kw)",
      new="    self.conv1 = Conv2d(self.in_channels, 6, 5)",
      tests=[T_PREC + "::test_every_layer_computes_in_the_model_dtype"]),
  "tagger-embed-without-dtype": dict(file="dlcore/models/rnn.py",
      old="embedding_init=nn.initializers.normal(1.0), **kw)",
      new="embedding_init=nn.initializers.normal(1.0))",
      tests=[T_PREC + "::test_every_layer_computes_in_the_model_dtype"]),
  "cgan-embed-without-dtype": dict(file="dlcore/models/generative.py",
      old='    e = nn.Embed(self.num_classes, self.embed_dim, name="label_embed", **kw)(y)\n    h = jnp.concatenate([_flat(x).astype(self.dtype), e], -1)\n    h = nn.leaky_relu(Linear(h.shape[-1], self.hidden, name="layers_0"',
      new='    e = nn.Embed(self.num_classes, self.embed_dim, name="label_embed")(y)\n    h = jnp.concatenate([_flat(x).astype(self.dtype), e], -1)\n    h = nn.leaky_relu(Linear(h.shape[-1], self.hidden, name="layers_0"',
      tests=[T_PREC + "::test_every_layer_computes_in_the_model_dtype"]),
  "batchnorm-without-dtype": dict(file="dlcore/models/generative.py",
      old="  return BatchNorm(momentum=0.9, epsilon=1e-5, name=name, **kw)",
      new="  return BatchNorm(momentum=0.9, epsilon=1e-5, name=name)",
      tests=[T_PREC + "::test_every_layer_computes_in_the_model_dtype"]),
  "bf16-pt-import": dict(file="dlcore/interop/__main__.py",
      old="  if tensor.dtype == torch.bfloat16:", new="  if False:",
      tests=["tests/test_export.py::test_bfloat16_weights_import_alike_from_pt_and_safetensors"]),
  "bf16-safetensors-import": dict(file="dlcore/interop/__main__.py",
      old="  import ml_dtypes  # noqa: F401 - registers bfloat16 with NumPy, for safetensors' reader\n",
      new="", tests=["tests/test_export.py::test_bfloat16_weights_import_alike_from_pt_and_safetensors"]),
  "xla-describe-ignores-late-backend": dict(file="dlcore/xlaflags.py",
      old="  if _late and environ is os.environ:", new="  if False:",
      tests=["tests/test_xlaflags.py::test_describe_tells_when_the_backend_started_too_early"]),
  "xla-flag-inherited-by-other-jaxlib": dict(file="dlcore/xlaflags.py",
      old="  if inherited:  # a parent", new="  if False:  # a parent",
      tests=["tests/test_xlaflags.py::test_a_child_with_another_jaxlib_drops_the_inherited_flag"]),
  "xla-flag-not-added": dict(file="dlcore/xlaflags.py",
      old='    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()\n', new="",
      tests=["tests/test_xlaflags.py", "-m", "not slow"]),
})
T_FAULT = "tests/test_faults.py"
T_DL = "tests/test_download.py"
BREAKS.update({
  "summary-written-in-place": dict(file="dlcore/harness/rundir.py",
      old="    files.write_json(path, summary, indent=2, sort_keys=True)",
      new="    json.dump(summary, open(path, 'w'), indent=2, sort_keys=True)",
      tests=[T_FAULT + "::test_run_files_are_replaced_whole_or_not_at_all"]),
  "download-no-checksum": dict(file="dlcore/data/images.py",
      old="    if sha256 and digest.hexdigest() != sha256:", new="    if False:",
      tests=[T_DL]),
  "download-no-size-check": dict(file="dlcore/data/images.py",
      old="    if expected is not None and received != expected:", new="    if False:",
      tests=[T_DL]),
  "download-in-place": dict(file="dlcore/data/images.py",
      old='  fd, tmp = tempfile.mkstemp(dir=folder, prefix=name + ".", suffix=".part")',
      new='  fd, tmp = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), path',
      tests=[T_DL]),
  "checkpoint-verification-off": dict(file="dlcore/checkpoint.py",
      old="      bad = verify_step(self._step_dir(s), manifest_required=required)",
      new="      bad = None", tests=[T_FAULT]),
  "resume-replays-one-step-short": dict(file="dlcore/train/loop.py",
      old="        if (calls_done + 1) * steps_per_call <= start_step:",
      new="        if (calls_done + 1) * steps_per_call < start_step:",
      tests=[T_PRE + "::test_sigterm_saves_the_step_and_auto_resume_finishes_bit_for_bit"]),
  "preempted-epoch-rows-not-saved": dict(file="dlcore/train/loop.py",
      old="step, epoch, extra=log.saved_rows(epoch))", new="step, epoch, extra=None)",
      tests=[T_PRE + "::test_sigterm_saves_the_step_and_auto_resume_finishes_bit_for_bit"]),
  "auto-resume-starts-over": dict(file="dlcore/harness/rundir.py",
      old="      resume = holds_run\n", new="      resume = False\n",
      tests=[T_PRE + "::test_auto_resume_starts_a_missing_or_empty_folder"]),
  "float16-never-skips": dict(file="dlcore/precision.py",
      old="    skip = ~finite & (scale.scale > FLOOR)", new="    skip = ~finite & False",
      tests=[T_PREC]),
  "stop-not-raised-again": dict(file="dlcore/preemption.py",
      old="    if _program:\n      _later(signum)\n", new="",
      tests=[T_PRE + "::test_a_stop_swallowed_by_a_weakref_callback_is_raised_again"]),
  "no-early-handler": dict(file="experiments/__init__.py",
      old="  preemption.early()\n", new="  pass\n",
      tests=[T_PRE + "::test_sigterm_while_a_program_starts_ends_in_one_line"]),
  "scorer-without-lock": dict(file="dlcore/harness/scoring.py",
      old='    with _exclusive(path + ".lock", SCORER_WAIT_S, what="train the scoring classifier"):',
      new='    with contextlib.nullcontext():',
      tests=[T_PRE + "::test_two_runs_at_once_on_an_empty_cache_train_the_scorer_once"]),
  "jax-cache-skips-small-programs": dict(file="dlcore/harness/jaxcache.py",
      old='  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)\n', new="",
      tests=[T_PRE + "::test_a_second_run_compiles_nothing"]),
  "jax-cache-keeps-empty-entries": dict(file="dlcore/harness/jaxcache.py",
      old="  drop_empty_entries(path)\n", new="",
      tests=[T_PRE + "::test_empty_entries_left_by_a_stop_are_dropped_from_the_jax_cache"]),
  "model-folder-written-in-place": dict(file="dlcore/checkpoint.py",
      old='    tmp = files.make_dir(parent, prefix=f".{base}.", suffix=".tmp")',
      new="    tmp = path; os.makedirs(path, exist_ok=True)",
      tests=[T_PRE + "::test_a_stop_while_a_model_folder_is_written_waits_for_the_whole_folder"]),
})
T_EXP = "tests/test_export.py"
BREAKS.update({
  "export-conv-kernel-layout": dict(file="dlcore/interop/torch.py",
      old='  out = {f"{prefix}.weight": np.ascontiguousarray(_a(p["kernel"]).transpose(3, 2, 0, 1))}',
      new='  out = {f"{prefix}.weight": np.ascontiguousarray(_a(p["kernel"]).transpose(3, 2, 1, 0))}',
      tests=[T_EXP]),
  "export-flatten-order": dict(file="dlcore/interop/torch.py",
      old="  weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)",
      new="  weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 1, 0).reshape(kernel.shape[1], -1)",
      tests=[T_EXP]),
  "export-lstm-gate-order": dict(file="dlcore/interop/torch.py",
      old='  w_ih = np.concatenate([_a(p[f"i{g}"]["kernel"]).T for g in gates])',
      new='  w_ih = np.concatenate([_a(p[f"i{g}"]["kernel"]).T for g in gates[::-1]])',
      tests=[T_EXP]),
  "seeds-summary-median": dict(file="dlcore/harness/seeds.py",
      old="      out[key] = float(np.mean(vals))", new="      out[key] = float(np.median(vals))",
      tests=[T_MEM + "::test_summarize_gives_mean_std_and_per_seed"]),
})
BREAKS.update({
  "no-restart-rows": dict(file="dlcore/harness/rundir.py",
      old="    run.restart_rows()\n", new="",
      tests=[T_PRE + "::test_an_experiment_without_checkpoints_starts_over_and_records_each_step_once"]),
})
BREAKS.update({
  "join-not-interruptible": dict(file="dlcore/distributed.py",
      old="    preemption.watch_blocked(stop_joining)\n", new="    pass\n",
      tests=[T_PRE + "::test_sigterm_while_waiting_to_join_a_job_stops_at_once"]),
  "model-folder-not-put-back": dict(file="dlcore/checkpoint.py",
      old="      if old is not None and not os.path.exists(path):  # failed between the two renames",
      new="      if False:",
      tests=[T_FAULT + "::test_a_model_folder_stopped_between_its_renames_is_put_back"]),
  "files-private-mode": dict(file="dlcore/files.py",
      old="        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes it private)",
      new="        pass",
      tests=[T_FAULT + "::test_run_files_are_replaced_whole_or_not_at_all"]),
  "files-written-in-place": dict(file="dlcore/files.py",
      old='''def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` all or nothing."""
  with replacing(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
  return path''', new='''def write_text(path: str, text: str) -> str:
  with open(path, "w") as f:
    f.write(text)
  return path''',
      tests=[T_FAULT + "::test_run_files_are_replaced_whole_or_not_at_all"]),
  "final-save-after-stop": dict(file="dlcore/train/loop.py",
      old='''    final_state = host_state()
    final = step_of(final_state)
''', new='''    final_state = host_state()
    final = step_of(final_state)
    where = None
    if (signal_name := preemption.stopping()) is not None:
      raise preemption.Preempted(signal_name, final, None, what=f"'{desc}'")
''', tests=[T_PRE + "::test_a_signal_in_the_last_evaluation_stops_after_saving"]),
})
T_LOOP = "tests/test_checkpoint.py"
BREAKS.update({  # the pieces of fit (issue 33)
  "mid-epoch-save-without-rows": dict(file="dlcore/train/loop.py",
      old="saves.save_due(host_state, log.saved_rows)", new="saves.save_due(host_state)",
      tests=["tests/test_engine_api.py::test_a_mid_epoch_checkpoint_keeps_the_epoch_rows_so_far"]),
  "saved-state-not-checked": dict(file="dlcore/train/loop.py",
      old="      self.check(host, step, epoch)\n      self.checkpointer.save(",
      new="      self.checkpointer.save(",
      tests=[T_LOOP + "::test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint",
             "tests/test_faults.py::test_divergence_stops_before_a_non_finite_state_is_saved"]),
  "nan-loss-not-checked": dict(file="dlcore/train/loop.py",
      old='if "loss" in row and not math.isfinite(row["loss"]) and not all_skipped:',
      new="if False:",
      tests=[T_LOOP + "::test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint",
             "tests/test_faults.py::test_divergence_stops_before_a_non_finite_state_is_saved"]),
  "evaluation-every-epoch": dict(file="dlcore/train/loop.py",
      old="return epoch == num_epochs - 1 or bool(every and (epoch + 1) % every == 0)",
      new="return True",
      tests=["tests/test_engine_api.py::test_evaluators_get_a_fixed_key_and_run_when_due"]),
  "checkpoint-ahead-of-the-record": dict(file="dlcore/train/loop.py",
      old="    history.append(record)\n", new="    saves.save_due(host_state)\n    history.append(record)\n",
      tests=["tests/test_engine_api.py::test_a_checkpoint_never_runs_ahead_of_the_epoch_record"]),
  "epoch-rows-host-copies-misplaced": dict(file="dlcore/train/loop.py",
      old="self.epoch_rows[len(self.epoch_rows) - len(rows):] = rows",
      new="self.epoch_rows[:len(rows)] = rows",
      tests=["tests/test_engine_api.py::"
             "test_train_metrics_are_written_every_log_every_calls_and_at_the_epoch_end"]),
  "metrics-written-every-call": dict(file="dlcore/train/loop.py",
      old="        if saves.falls_due(step, epoch) or log.full:",
      new="        if saves.falls_due(step, epoch) or True:",
      tests=["tests/test_engine_api.py::"
             "test_train_metrics_are_written_every_log_every_calls_and_at_the_epoch_end"]),
})
T_ANY = T_PRE + "::test_sigterm_at_any_moment_then_auto_resume_gives_the_uninterrupted_numbers"
T_TWO = T_PRE + "::test_two_processes_stop_together_at_any_moment_on_sigterm_to_the_launcher"
BREAKS.update({
  "preempted-epoch-rows-not-saved-chain": dict(file="dlcore/train/loop.py",
      old="step, epoch, extra=log.saved_rows(epoch))", new="step, epoch, extra=None)",
      tests=[T_ANY]),
  "agree-without-plus-one": dict(file="dlcore/preemption.py",
      old="      self.target = max(steps) + 1", new="      self.target = max(steps)",
      tests=[T_TWO]),
  "jax-preemption-service-on": dict(file="dlcore/distributed.py",
      old='  jax.config.update("jax_enable_preemption_service", False)\n', new="",
      tests=[T_TWO]),
  "no-agreement-stop-at-own-step": dict(file="dlcore/preemption.py",
      old="  return _job.reached(int(step))", new="  return _requested", tests=[T_TWO]),
})


BREAKS.update({
  "stopped-exit-runs-finalization": dict(file="dlcore/harness/cli.py",
      old="  if distributed.process_count() > 1 or (stopped and preemption.program_process()):",
      new="  if distributed.process_count() > 1:", tests=[T_ANY]),
})


T_CK = "tests/test_checkpoint.py"
BREAKS.update({  # issue 33: saves in the background, the fast interval check
  "background-save-without-copy": dict(file="dlcore/checkpoint.py",
      old="    state = jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x,\n                         state)\n",
      new="",
      tests=[T_CK + "::test_a_background_save_keeps_the_state_it_was_given"]),
  "background-error-lost": dict(file="dlcore/checkpoint.py",
      old="        pending.result()\n", new="        pending.exception()\n",
      tests=[T_CK + "::test_a_failed_background_save_raises_at_the_next_call_and_keeps_the_steps_before"]),
  "confusion-matrix-transposed": dict(file="dlcore/harness/plots.py",
      old="minlength=num_classes * num_classes).reshape(num_classes, num_classes)",
      new="minlength=num_classes * num_classes).reshape(num_classes, num_classes).T",
      tests=["tests/test_plots.py::test_confusion_matrix_is_scikit_learns"]),
  "all-finite-ignores-a-leaf": dict(file="dlcore/train/loop.py",
      old="  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))",
      new="  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves[1:]]))",
      tests=["tests/test_faults.py::test_all_finite_sees_a_non_finite_value_in_any_leaf"]),
  "classifier-final-from-the-epoch-before": dict(file="dlcore/train/classify.py",
      old='    final = h[-1]["eval"] if same else', new='    final = h[max(0, len(h) - 2)]["eval"] if same else',
      tests=["tests/test_engine_api.py::test_a_classifiers_final_test_numbers_are_its_last_evaluation_and_a_fresh_one"]),
  "init-compiled-at-level-0": dict(file="dlcore/train/state.py",
      old='RUN_ONCE = {"xla_backend_optimization_level": 1}',
      new='RUN_ONCE = {"xla_backend_optimization_level": 0}',
      tests=["tests/test_models.py", "-k", "run_once"]),
  "background-error-masks-the-block-error": dict(file="dlcore/checkpoint.py",
      old="    except CheckpointError as e:\n      sys.stderr.write(f\"warning: {e}\\n\")\n",
      new="    except ValueError:\n      raise\n",
      tests=[T_CK + "::test_an_error_leaving_the_block_is_not_replaced_by_a_failed_background_write"]),
  "confusion-matrix-takes-any-label": dict(file="dlcore/harness/plots.py",
      old="    if y.size and (y.min() < 0 or y.max() >= num_classes):",
      new="    if False:",
      tests=["tests/test_plots.py::test_confusion_matrix_is_scikit_learns"]),
  "should-save-skips-the-initial-save": dict(file="dlcore/checkpoint.py",
      old="    if step % self.save_every and (self._pending is not None\n                                   or self.manager.latest_step() is not None):",
      new="    if step % self.save_every:",
      tests=[T_CK + "::test_should_save_takes_orbax_decisions"]),
})
T_IMG = "tests/test_image_models.py"
BREAKS.update({
  "pool-vjp-ties-not-halved": dict(file="dlcore/models/layers.py",
      old="return jnp.where(a == m, one, zero) / jnp.where(b == m, two, one)",
      new="return jnp.where(a == m, one, zero)",
      tests=[T_IMG + "::test_max_pool2d_vjp_is_autodiffs_bit_for_bit"]),
  "pool-vjp-keeps-negative-zeros": dict(file="dlcore/models/layers.py",
      old="  gx = jnp.where(gx == 0, zero, gx)", new="",
      tests=[T_IMG + "::test_max_pool2d_vjp_is_autodiffs_bit_for_bit"]),
  "pool-vjp-rows-swapped": dict(file="dlcore/models/layers.py",
      old="gx = jnp.stack(rows, axis=-4)", new="gx = jnp.stack(rows[::-1], axis=-4)",
      tests=[T_IMG + "::test_max_pool2d_vjp_is_autodiffs_bit_for_bit"]),
  "shift-conv-taps-transposed": dict(file="dlcore/models/layers.py",
      old="term = view.astype(f32) * rhs[t // kw, t % kw, 0].astype(f32)",
      new="term = view.astype(f32) * rhs[t % kh, t // kh, 0].astype(f32)",
      tests=[T_IMG + "::test_shift_conv_equals_xla_conv"]),
  "shift-conv-no-input-gradient": dict(file="dlcore/models/layers.py",
      old="  d_lhs = jax.vjp(as_product, lhs)[1](g)[0]\n",
      new="  d_lhs = jnp.zeros_like(lhs)\n",
      tests=[T_IMG + "::test_shift_conv_equals_xla_conv"]),
  "shift-conv-kernel-gradient-taps-reversed": dict(file="dlcore/models/layers.py",
      old="d_rhs = (patches.reshape(kh * kw, -1) @", new="d_rhs = (patches[::-1].reshape(kh * kw, -1) @",
      tests=[T_IMG + "::test_shift_conv_equals_xla_conv"]),
  "cnn-conv1-not-routed": dict(file="dlcore/models/layers.py",
      old="o >= SHIFT_CONV_MIN_FEATURES and", new="o >= 10 * SHIFT_CONV_MIN_FEATURES and",
      tests=[T_IMG + "::test_auto_conv_routes_one_channel_many_features_to_shift_conv"]),
  "cnn-demo-flax-transpose-not-flipped": dict(file="experiments/cnn.py",
      old="by_flax = convt(transpose_kernel=True).apply(k, yb)", new="by_flax = convt().apply(k, yb)",
      tests=["tests/test_image_experiments.py::test_cnn_experiment_on_digits"]),
  "cnn-demo-groups-ignored": dict(file="experiments/cnn.py",
      old="kernel_size=(3, 3), feature_group_count=groups)", new="kernel_size=(3, 3))",
      tests=["tests/test_image_experiments.py::test_cnn_experiment_on_digits"]),
  "scatter-grad-taps-transposed": dict(file="dlcore/models/layers.py",
      old="d_lhs.at[:, i:i + ho, j:j + wo].add(cols[:, :, :, i, j])",
      new="d_lhs.at[:, i:i + ho, j:j + wo].add(cols[:, :, :, j, i])",
      tests=[T_IMG + "::test_scatter_grad_conv_is_xlas_with_a_col2im_input_gradient"]),
  "scatter-grad-crop-from-the-far-side": dict(file="dlcore/models/layers.py",
      old="d_lhs[:, pt:pt + lhs.shape[1], pl:pl + lhs.shape[2]]",
      new="d_lhs[:, pb:pb + lhs.shape[1], pr:pr + lhs.shape[2]]",
      tests=[T_IMG + "::test_scatter_grad_conv_is_xlas_with_a_col2im_input_gradient"]),
  "lenet-conv2-not-routed": dict(file="dlcore/models/layers.py",
      old="1 < lhs.shape[-1] <= SCATTER_GRAD_MAX_CHANNELS", new="1 < lhs.shape[-1] <= 0",
      tests=[T_IMG + "::test_auto_conv_routes_few_channel_stride_one_convs_to_scatter_grad"]),
  "scorer-trained-with-shift-conv": dict(file="dlcore/harness/scoring.py",
      old="  with reference_kernels():\n    return _load_or_train_scorer(",
      new="  if True:\n    return _load_or_train_scorer(",
      tests=["tests/test_engine_api.py::test_the_scorer_is_trained_once_cached_and_identified"]),
  "scorer-features-with-shift-conv": dict(file="dlcore/harness/scoring.py",
      old="    with reference_kernels():  # traced", new="    if True:  # traced",
      tests=["tests/test_engine_api.py::test_the_scorer_is_trained_once_cached_and_identified"]),
  "reference-kernels-not-restored": dict(file="dlcore/models/layers.py",
      old="  finally:\n    SHIFT_CONV_MIN_FEATURES, SCATTER_GRAD_MAX_CHANNELS, TILE_POOL_VJP = saved",
      new="  finally:\n    pass",
      tests=["tests/test_engine_api.py::test_the_scorer_is_trained_once_cached_and_identified"]),
  "shift-conv-sums-in-half-precision": dict(file="dlcore/models/layers.py",
      old="term = view.astype(f32) * rhs[t // kw, t % kw, 0].astype(f32)",
      new="term = view * rhs[t // kw, t % kw, 0]",
      tests=[T_IMG + "::test_shift_conv_rounds_once_in_half_precision"]),
  "reference-kernels-keep-the-pool-vjp": dict(file="dlcore/models/layers.py",
      old="SCATTER_GRAD_MAX_CHANNELS, TILE_POOL_VJP = sys.maxsize, 0, False",
      new="SCATTER_GRAD_MAX_CHANNELS, TILE_POOL_VJP = sys.maxsize, 0, True",
      tests=[T_IMG + "::test_reference_kernels_give_forward_mode_autodiff"]),
  "scatter-grad-ignores-precision": dict(file="dlcore/models/layers.py",
      old=" and precision is None", new="",
      tests=[T_IMG + "::test_auto_conv_routes_few_channel_stride_one_convs_to_scatter_grad"]),
  "shift-conv-any-stride": dict(file="dlcore/models/layers.py",
      old="kh * kw <= SHIFT_CONV_MAX_TAPS\n        and tuple(window_strides) == (1, 1)):",
      new="kh * kw <= SHIFT_CONV_MAX_TAPS):",
      tests=[T_IMG + "::test_auto_conv_routes_one_channel_many_features_to_shift_conv"]),
  "shift-conv-any-taps": dict(file="dlcore/models/layers.py",
      old="kh * kw <= SHIFT_CONV_MAX_TAPS\n", new="True\n",
      tests=[T_IMG + "::test_auto_conv_routes_one_channel_many_features_to_shift_conv"]),
  "eval-chunk-in-half-precision": dict(file="experiments/model_building.py",
      old='if cfg.common.precision != "float32" or jax.default_backend() != "cpu":',
      new='if jax.default_backend() != "cpu":',
      tests=[T_IMG + "::test_lenet_test_forward_in_chunks_gives_the_same_bits"]),
  "chunked-rest-dropped": dict(file="dlcore/train/steps.py",
      old="  if b > n * chunk:\n    parts.append", new="  if False:\n    parts.append",
      tests=[T_IMG + "::test_chunked_keeps_each_example_in_place"]),
  "chunked-chunks-interleaved": dict(file="dlcore/train/steps.py",
      old="x[:n * chunk].reshape(n, chunk, *x.shape[1:])",
      new="x[:n * chunk].reshape(chunk, n, *x.shape[1:]).swapaxes(0, 1)",
      tests=[T_IMG + "::test_chunked_keeps_each_example_in_place",
             T_IMG + "::test_lenet_test_forward_in_chunks_gives_the_same_bits"]),
})
T_SW = "tests/test_sweeps.py"
BREAKS.update({
  "sweep-hyperparams-not-set": dict(file="dlcore/optim.py",
      old="        k: (jnp.asarray(values[k], dtype=jnp.result_type(v)) if k in values else v)",
      new="        k: v",
      tests=[T_SW + "::test_injected_hyperparameters_compute_what_the_plain_optimizer_does",
             T_SW + "::test_a_member_of_a_sweep_is_the_single_run_with_its_point_and_seed"]),
  "sweep-members-seed-major": dict(file="dlcore/harness/sweeps.py",
      old="    pairs = [(s, p) for p in self.points for s in seeds]",
      new="    pairs = [(s, p) for s in seeds for p in self.points]",
      tests=[T_SW + "::test_a_member_of_a_sweep_is_the_single_run_with_its_point_and_seed"]),
  "sweep-members-share-one-point": dict(file="dlcore/train/members.py",
      old="  if hyperparams is not None:\n    from dlcore import optim",
      new="  if False:\n    from dlcore import optim",
      tests=[T_SW + "::test_a_grid_of_two_names_with_one_seed"]),
  "sweep-programs-share-checkpoints": dict(file="dlcore/harness/classify.py",
      old='checkpoint_dir=run.file("checkpoints", tag) if static else run.file("checkpoints"),',
      new='checkpoint_dir=run.file("checkpoints"),',
      tests=[T_SW + "::test_a_shape_option_crossed_with_a_number_runs_one_program_per_value"]),
  "sweep-points-not-in-program-order": dict(file="dlcore/harness/classify.py",
      old="    sweep = sweep.ordered(shapes(type(cfg)))  # its points in the programs' order",
      new="    pass",
      tests=[T_SW + "::test_a_shape_option_crossed_with_a_number_runs_one_program_per_value"]),
  "sweep-shape-value-not-applied": dict(file="dlcore/harness/classify.py",
      old="    c = dataclasses.replace(cfg, **static)", new="    c = cfg",
      tests=[T_SW + "::test_a_shape_option_crossed_with_a_number_runs_one_program_per_value"]),
  "spiral-width-not-applied": dict(file="experiments/spiral.py",
      old="      c = dataclasses.replace(cfg, **static)", new="      c = cfg",
      tests=[T_SW + "::test_a_width_sweep_of_the_spiral"]),
  "gan-sweep-players-keep-the-default": dict(file="experiments/gan.py",
      old="  if seeds.hyper:  # each member's point, in both players' optimizer states",
      new="  if False:",
      tests=[T_SW + "::test_a_gan_sweep_sets_both_players_and_needs_its_scores"]),
  "seeds-state-drops-the-points": dict(file="dlcore/harness/seeds.py",
      old="    return mb.create_members(model, tx, example_x, self.seeds, init_args, loss_scale,\n"
          "                             hyperparams=self.hyper)",
      new="    return mb.create_members(model, tx, example_x, self.seeds, init_args, loss_scale)",
      tests=[T_SW + "::test_a_spiral_lr_sweep_member_is_its_single_run"]),
  "planar-lr-scale-ignored": dict(file="experiments/planar.py",
      old='optim.make_optimizer("sgd", lr * lr_scale)', new='optim.make_optimizer("sgd", lr)',
      tests=[T_SW + "::test_planar_sweeps_its_learning_rate_scale"]),
  "conv-members-vmapped": dict(file="dlcore/train/members.py",
      old="        fn = _members_loop_for_convolutions(fn, self.members)", new="        pass",
      tests=[T_MEM + "::test_convolution_members_run_member_after_member_and_equal_single_runs"]),
  "conv-never-detected": dict(file="dlcore/train/members.py",
      old='  return "conv_general_dilated" in str(jax.make_jaxpr(step)(one, b))',
      new="  return False",
      tests=[T_MEM + "::test_convolution_members_run_member_after_member_and_equal_single_runs"]),
  "compilation-left-in-its-section": dict(file="dlcore/timing.py",
      old="    if _stack and _main():\n      _stack[-1][2] += counted",
      new="    if False:\n      _stack[-1][2] += counted",
      tests=["tests/test_timing.py::test_compilation_is_taken_out_of_the_section_that_compiled"]),
  "sweep-values-unchecked": dict(file="dlcore/harness/sweeps.py",
      old="      cli.check(dataclasses.replace(cfg, **{name: v}))", new="      pass",
      tests=[T_SW + "::test_a_bad_sweep_stops_before_any_work_in_one_line"]),
  "sweep-old-runs-refused": dict(file="dlcore/harness/rundir.py",
      old="        old.setdefault(key, value)", new="        pass",
      tests=[T_SW + "::test_a_run_saved_before_sweep_existed_resumes"]),
})


def main(argv=None) -> int:
  """Plants each named break (all by default), runs its tests, restores the file; prints
  CAUGHT or MISSED per break. Exit 1 if any break was missed or no longer applies."""
  import argparse
  import os
  import subprocess
  import sys
  import time
  p = argparse.ArgumentParser(prog="python -m tests.mutations", description=__doc__)
  p.add_argument("names", nargs="*", help=f"breaks to try (default: all {len(BREAKS)})")
  p.add_argument("--list", action="store_true", help="list the breaks and their tests")
  args = p.parse_args(argv)
  if args.list:
    for name, b in BREAKS.items():
      print(f"{name}: {b['file']} -> {' '.join(b['tests'])}")
    return 0
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  bad = 0
  for name in args.names or list(BREAKS):
    b = BREAKS[name]
    path = os.path.join(root, b["file"])
    with open(path) as f:
      src = f.read()
    if src.count(b["old"]) != 1:
      print(f"STALE  {name}: the code it breaks changed ({b['file']}); update tests/mutations.py")
      bad += 1
      continue
    with open(path, "w") as f:
      f.write(src.replace(b["old"], b["new"]))
    start = time.monotonic()
    try:
      out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            *b["tests"]], cwd=root, capture_output=True, text=True, timeout=1800)
    finally:
      with open(path, "w") as f:
        f.write(src)
    caught = out.returncode != 0
    failed = [line.split(" ")[1] for line in out.stdout.splitlines()
              if line.startswith(("FAILED", "ERROR"))]
    bad += not caught
    print(f"{'CAUGHT' if caught else 'MISSED'} {name} ({time.monotonic() - start:.0f} s): "
          f"{', '.join(failed)}", flush=True)
  return 1 if bad else 0


if __name__ == "__main__":
  raise SystemExit(main())
