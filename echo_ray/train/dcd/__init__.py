"""Stage 3, DCD (Direct Conditional Distillation): multi-step ECHO_Base teacher -> one-step ECHO student.

method.md, "Stage 3: DCD". The frozen teacher decodes DCD prompts multi-step inside Ray actors and
records, for every response position, the committed token, the step it was committed at, and its
top-K conditional distribution at that step (`trajectory`). Records stream to the Ray Train
workers through bounded per-worker queues (`stream`, fed by `pool`), or are replayed from Parquet
(`store`). The student trains in the RAD layout with the teacher's response as the clean copy and a
fully masked noisy copy (`batch`), on a commit-step-weighted forward KL plus EOS supervision
(`loss`). `driver` runs the rounds; `agreement` measures one-step agreement with the teacher.

Modules:
    trajectory  PromptTask / TrajectoryRecord and their extraction from decoder traces
    store       Parquet write and replay of trajectory records
    replay      stored trajectories as teacher results (ablations without a teacher)
    tasks       the dcd split cut into held-out prompts, fresh prompts per round, spares
    teacher     TeacherWorker: the actor body that decodes prompts with the frozen teacher
    pool        TeacherPool: N actors, in-flight tracking, dead-actor replacement
    messages    the typed stream messages: Step (records), RoundEnd, Stop, Failed
    stream      the packer that keeps workers in step, the queue reader, the packet log for replay
    feeder      driver thread: teacher results -> Parquet + bounded per-worker queues, metrics
    worker      the row source inside each Ray Train worker, per-round agreement
    best        keep-best: best-round bookkeeping, drop warnings, best/ and final <- best
    batch       DcdStage: student rows in the RAD layout with their targets, and the loss call
    loss        commit-step weights and the top-K + rest-bucket KL + EOS loss
    agreement   one-step vs teacher agreement on held-out prompts
    checks      preflight validation before any actor starts
    driver      run_dcd: the whole stage;  cli: `echo-ray train dcd` / jobs/train_dcd.py
"""
