/**
 * When to restart a server that died: at once the first few times, and not again once it
 * has died `maxRestarts` times within `windowMs` (a crash loop needs a person). Pure; time
 * comes in as an argument.
 */

export class RestartPolicy {
  private readonly deaths: number[] = [];

  constructor(
    readonly maxRestarts = 5,
    readonly windowMs = 3 * 60 * 1000,
  ) {}

  /** Records a death at `nowMs`; true when the server should be started again. */
  shouldRestart(nowMs: number): boolean {
    this.deaths.push(nowMs);
    while (this.deaths.length > 0 && nowMs - this.deaths[0] > this.windowMs) {
      this.deaths.shift();
    }
    return this.deaths.length <= this.maxRestarts;
  }

  /** Forgets past deaths (after a restart by hand). */
  reset(): void {
    this.deaths.length = 0;
  }
}
