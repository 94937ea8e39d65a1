/**
 * Serving update jobs on a device's MQTT connection: take its job topic, run each job through an
 * UpdateHandler as a job from MQTT (the URL policy applies, never file:), publish every state
 * retained. A retained job is never run: it would run again at every start (a job is live or
 * nothing). An agent wires it in on its own connection (Agent is a TopicLink); a bare client
 * through topicLink() (docs/FLEET.md, "Wiring into the agent").
 */
import type { IPublishPacket } from 'mqtt';
import type { TopicLink, TopicSubscription } from '../mqtt/subscriptions.js';
import { updateStateTopic, updateTopic } from '../mqtt/topics.js';
import type { InstallResult } from './install.js';
import { hookWarning, type UpdateHandler } from './update.js';
import { sealState, type UpdateEvent, type UpdateJob } from './wire.js';

export interface ServeUpdatesOptions {
  fleet: string;
  device: string;
  /**
   * Called once after a job committed (e.g. drain the serving pipeline and reopen the active set),
   * not again when the broker redelivers that job. A rejection is published as the job's
   * `committed` state again with `warning` (UPDATE_HOOK_FAILED): the release stays committed.
   */
  onCommitted?: (r: InstallResult) => void | Promise<void>;
  /** Every event, also for logging. */
  onEvent?: (e: UpdateEvent) => void;
  /** After each subscription to the job topic is granted (at start and after every reconnect). */
  onSubscribed?: () => void;
  /** Jobs not run and why (a retained job). */
  log?: (level: 'info' | 'warn', message: string) => void;
}

/** The job topic of one device, served until stop(). */
export class JobListener {
  private readonly jobs: string;
  private readonly states: string;
  /** Runs whose commit was handled (a redelivered job id returns the first run's promise). */
  private readonly handled = new WeakSet<Promise<InstallResult>>();
  private subscription?: TopicSubscription;

  constructor(
    private readonly link: TopicLink,
    private readonly handler: UpdateHandler,
    private readonly o: ServeUpdatesOptions,
  ) {
    this.jobs = updateTopic(o.fleet, o.device);
    this.states = updateStateTopic(o.fleet, o.device);
  }

  /** Subscribes; rejects BROKER_REFUSED when the broker refuses the job topic (the link is left as it was). */
  async start(): Promise<void> {
    this.subscription = await this.link.subscribe(this.jobs, (payload, packet) => this.onJob(payload, packet), {
      qos: 1,
      ...(this.o.onSubscribed ? { onSubscribed: this.o.onSubscribed } : {}),
    });
  }

  async stop(): Promise<void> {
    await this.subscription?.close();
  }

  private publish(e: UpdateEvent): void {
    this.o.onEvent?.(e);
    this.link.publish(this.states, JSON.stringify(e), { qos: 1, retain: true });
  }

  private onJob(payload: Buffer, packet: IPublishPacket): void {
    if (packet.retain) {
      this.o.log?.(
        'warn',
        `ignored a retained update job on ${this.jobs} (${payload.length} bytes): jobs are never retained; clear it with an empty retained message`,
      );
      return;
    }
    let job: unknown;
    try {
      job = JSON.parse(payload.toString('utf8'));
    } catch {
      job = null; // the handler answers `failed` BAD_MESSAGE
    }
    const run = this.handler.run(job, (e) => this.publish(e), 'mqtt');
    if (this.handled.has(run)) return;
    this.handled.add(run);
    run
      .then(
        (r) => this.afterCommit(job as UpdateJob, r), // run() resolved: the job was valid
        () => {}, // a failure was already reported as `failed`
      )
      .catch(() => {}); // a throwing onEvent while reporting it
  }

  /** onCommitted; its rejection is the job's `committed` again with a warning, never `failed`. */
  private async afterCommit(job: UpdateJob, r: InstallResult): Promise<void> {
    try {
      await this.o.onCommitted?.(r);
    } catch (err) {
      const e: UpdateEvent = {
        jobId: job.jobId,
        state: 'committed',
        modelSetId: r.modelSetId,
        release: r.release,
        warning: hookWarning('onCommitted', err),
        at: new Date().toISOString(),
      };
      this.publish(sealState(e, job.nonce));
    }
  }
}

/**
 * Subscribes to the device's job topic and serves it until stop(). A refused subscription
 * rejects (BROKER_REFUSED for a SUBACK failure code) and leaves the link as it was.
 */
export async function serveUpdates(
  link: TopicLink,
  handler: UpdateHandler,
  o: ServeUpdatesOptions,
): Promise<{ stop: () => Promise<void> }> {
  const listener = new JobListener(link, handler, o);
  await listener.start();
  return { stop: () => listener.stop() };
}
