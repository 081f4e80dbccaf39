/** Typed errors of provisioning/build-agent, each with a stable code and exit status. */
export type BuildErrorCode =
  | 'E_USAGE' // bad flag or value: exit 2
  | 'E_TOOL' // a tool (cross compiler, tar, npm) is missing: exit 2, with the package to install
  | 'E_INPUT' // the repository is not built, a --node-tarball is not an official Node tarball: exit 2
  | 'E_NODE' // the Node runtime cannot be fetched or does not fit the target: exit 1
  | 'E_ADDON' // the native addon does not compile, or came out for another CPU: exit 1
  | 'E_BUNDLE'; // esbuild failed: exit 1

export class BuildError extends Error {
  readonly code: BuildErrorCode;
  constructor(code: BuildErrorCode, message: string) {
    super(message);
    this.name = 'BuildError';
    this.code = code;
  }
  get exitCode(): number {
    return this.code === 'E_USAGE' || this.code === 'E_TOOL' || this.code === 'E_INPUT' ? 2 : 1;
  }
}

export function isBuildError(err: unknown): err is BuildError {
  return err instanceof BuildError;
}
