/**
 * The interpreter the Python extension (ms-python.python) has selected, if it is installed.
 * Its API has changed over the years; both the `environments` API and the older
 * `settings.getExecutionDetails` are tried, and any failure means "none".
 */

import * as vscode from "vscode";

interface PythonExtensionApi {
  environments?: {
    getActiveEnvironmentPath(resource?: vscode.Uri): { path: string } | undefined;
  };
  settings?: {
    getExecutionDetails(resource?: vscode.Uri): { execCommand: string[] | undefined };
  };
}

export async function selectedPythonInterpreter(
  resource: vscode.Uri | undefined,
  log: vscode.LogOutputChannel,
): Promise<string | undefined> {
  const extension = vscode.extensions.getExtension<PythonExtensionApi>("ms-python.python");
  if (!extension) {
    return undefined;
  }
  try {
    const api = extension.isActive ? extension.exports : await extension.activate();
    const fromEnvironments = api.environments?.getActiveEnvironmentPath(resource)?.path;
    if (fromEnvironments) {
      return fromEnvironments;
    }
    return api.settings?.getExecutionDetails(resource).execCommand?.[0];
  } catch (error) {
    log.warn(`could not ask the Python extension for its interpreter: ${String(error)}`);
    return undefined;
  }
}
