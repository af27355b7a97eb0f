/**
 * Runs many copy jobs at once while keeping their writes in order: each job does its slow,
 * independent part (reading, zero detection) concurrently, then waits for its turn to *start*
 * its writes, so a format allocates host clusters in guest order; the writes themselves then
 * run concurrently with everything else. At most `limit` jobs exist at a time, which bounds
 * memory to `limit` buffers.
 */
export interface OrderedJob {
  /** Concurrent part; its result is handed to `issue`. */
  prepare(): Promise<void>;
  /** Starts the writes synchronously, in job order, and returns their completion. */
  issue(): Promise<unknown>;
}

export class OrderedPool {
  private nextTurn = 0;
  private readonly turnWaiters = new Map<number, () => void>();
  private readonly running = new Set<Promise<void>>();
  private issued = 0;
  private failure: { error: unknown } | null = null;

  /**
   * @param limit jobs at a time
   * @param serialWrites a job's writes must complete before the next job's start: for plain
   *   writes to one host file, which the kernel serializes anyway (ext4 spins on the inode
   *   lock when several threads write at once). Compressed writes stay concurrent.
   */
  constructor(
    private readonly limit: number,
    private readonly serialWrites = false,
  ) {}

  get failed(): boolean {
    return this.failure !== null;
  }

  /** Adds a job, waiting first while `limit` jobs are running. Throws the first failure. */
  async add(job: OrderedJob): Promise<void> {
    while (this.running.size >= this.limit && !this.failure) await Promise.race(this.running);
    this.throwIfFailed();
    const ticket = this.issued++;
    const p: Promise<void> = this.run(job, ticket)
      .catch((error) => {
        this.failure ??= { error };
      })
      .finally(() => this.running.delete(p));
    this.running.add(p);
  }

  /** Waits for every job; throws the first failure. */
  async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.all(this.running);
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }

  private async run(job: OrderedJob, ticket: number): Promise<void> {
    let prepared: { error: unknown } | null = null;
    try {
      await job.prepare();
    } catch (error) {
      prepared = { error };
    }
    await this.turn(ticket);
    let writes: Promise<unknown> | undefined;
    try {
      if (!prepared && !this.failure) {
        writes = job.issue();
        if (this.serialWrites) await writes;
      }
    } finally {
      this.pass(ticket);
    }
    if (prepared) throw prepared.error;
    await writes;
  }

  private turn(ticket: number): Promise<void> {
    if (ticket === this.nextTurn) return Promise.resolve();
    return new Promise((resolve) => this.turnWaiters.set(ticket, resolve));
  }

  private pass(ticket: number): void {
    this.nextTurn = ticket + 1;
    const wake = this.turnWaiters.get(this.nextTurn);
    if (wake) {
      this.turnWaiters.delete(this.nextTurn);
      wake();
    }
  }
}
