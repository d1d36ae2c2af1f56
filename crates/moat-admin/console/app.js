/* placeholder: the console is built on branch h2 */
