/**
 * Why an import (of a whole source, or of one image) was refused: the message says what, where and
 * what was expected, and is shown to the operator as is. Never holds credentials (imports use none).
 */
export class ImportError extends Error {
  override readonly name = 'ImportError';
  /** The image it is about (`registry/repository:tag`), once known. */
  readonly image: string | undefined;
  constructor(message: string, image?: string) {
    super(message);
    this.image = image;
  }
}

/** The import was interrupted (SIGINT, SIGTERM): nothing more is written, the staging directory is removed. */
export class ImportAborted extends Error {
  override readonly name = 'ImportAborted';
  constructor() {
    super('interrupted');
  }
}
